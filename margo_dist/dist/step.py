"""How one worker takes part in a training step and in an evaluation: the step plan.

The trainer (``train/loop.py``) is the same code for one worker and for N: everything
about a step or an evaluation that depends on which worker runs it, or on how many there
are, is decided here from the communicator and the placement (the owner rule,
``dist/sharding.py``). With one worker every answer is "all of it" and every reduction
the identity, which is local mode.

What a worker does with a step (docs/distributed.md):

- whole graph: every worker draws the same triplets and rates all of them, each over
  its block of columns, the blocks' ratings summed (``Recommender.forward``); worker r's
  loss takes triplets r, r + N, ... (``Batch.loss_rows``);
- sampled blocks: worker r takes the triplets whose user it owns and encodes the step's
  items it owns, so its blocks start from its own nodes;
- either way it regularises the whole step's rows that it owns (no rows to fetch), every
  mean divides by the whole step's size, and the replicated (dense) parameters'
  gradients are summed over the workers (torch DDP, ``replicate``), so the workers'
  losses and gradients add up to the local step's;
- evaluation: each worker ranks the users it owns and the metric sums are added up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from margo_dist.dist.comm import Communicator, TorchComm
from margo_dist.dist.sharding import ITEM, USER, Placement, ShardedTable
from margo_dist.graph.tensors import Batch, ComputeGraph
from margo_dist.model.placement import RowPlacement

if TYPE_CHECKING:
    from margo_dist.model.margo import Recommender

Triplets = tuple[np.ndarray, np.ndarray, np.ndarray]  # users, positives, negatives of one step


class StepPlan:
    """One worker's part of every step and evaluation, from ``comm`` and ``placement``."""

    def __init__(self, comm: Communicator, placement: RowPlacement) -> None:
        if comm.world_size > 1 and getattr(placement, "comm", None) is not comm:
            raise ValueError(f"a world of {comm.world_size} workers needs a Placement built on its communicator "
                             "(the owner rule): without one every worker would train alone")
        self.comm = comm
        self.placement = placement
        self._rank, self._world = comm.rank, comm.world_size
        if isinstance(placement, Placement):
            self._user_owner, self._item_owner = placement.spaces[USER].owner, placement.spaces[ITEM].owner
        else:  # one process owns every row
            self._user_owner = np.zeros(placement.owned(USER).numel(), np.int64)
            self._item_owner = np.zeros(placement.owned(ITEM).numel(), np.int64)

    @property
    def distributed(self) -> bool:
        return self.placement.distributed

    # -- what this worker holds ------------------------------------------------------------

    def own_feature_rows(self, features: list[Tensor], feature_ids: Tensor | None, n_items: int) -> list[Tensor]:
        """The raw-feature rows of the items this worker owns (all of them in local mode).

        ``features``: every item's rows (``feature_ids`` None) or the rows of ``feature_ids``
        (a worker that read only its shard's rows)."""
        owned = self.placement.owned(ITEM) if self.distributed else torch.arange(n_items)
        if feature_ids is None:
            return [f.index_select(0, owned) if self.distributed else f for f in features]
        if not torch.equal(feature_ids, owned):
            raise ValueError(f"the data holds the feature rows of {feature_ids.numel()} items, not the "
                             f"{owned.numel()} this worker owns (a shard of another owner array?)")
        return list(features)

    # -- the step's batches ------------------------------------------------------------------

    def whole_graph_batches(self, graph: ComputeGraph, steps: Iterable[Triplets]) -> Iterator[Batch]:
        """One batch per step on the whole graph: every worker holds the step's triplets (and
        rates them all, ``Recommender.forward``); its loss takes its strided share of them."""
        for u, i, j in steps:
            batch = Batch.full(graph, *(torch.from_numpy(a) for a in (u, i, j)))
            if self._world > 1:
                batch.loss_rows = slice(self._rank, None, self._world)
                self._own_regularised(batch, u, i, j)
            yield batch

    def sampled_shares(self, steps: list[Triplets]) -> list[tuple[np.ndarray, ...]]:
        """Per step, the request this worker's block sampler serves: the triplets whose user it
        owns and the step's items it owns (``BlockSampler.batch``'s arguments)."""
        shares = []
        for u, i, j in steps:
            mine = self._user_owner[u] == self._rank
            items = np.unique(np.concatenate([i, j]))
            shares.append((u[mine], i[mine], j[mine], items[self._item_owner[items] == self._rank]))
        return shares

    def sampled_batches(self, steps: list[Triplets], batches: Iterable[Batch]) -> Iterator[Batch]:
        """``batches`` (sampled from ``sampled_shares(steps)``, in order) as parts of their steps."""
        for (u, i, j), batch in zip(steps, batches):
            if self._world > 1:
                batch.step_size = u.size
                self._own_regularised(batch, u, i, j)
            yield batch

    def _own_regularised(self, batch: Batch, u: np.ndarray, i: np.ndarray, j: np.ndarray) -> None:
        """Set the rows of the whole step (u, i, j) that this worker owns as the batch's
        regularised rows: the workers' terms add up to the step's."""
        items = np.concatenate([i, j])
        batch.reg_users = torch.from_numpy(u[self._user_owner[u] == self._rank])
        batch.reg_items = torch.from_numpy(items[self._item_owner[items] == self._rank])

    # -- gradients -------------------------------------------------------------------------

    def replicate(self, model: "Recommender") -> None:
        """Sum the gradients of ``model``'s replicated (dense) module over the workers from now on:
        torch DDP wraps it, sharded tables excluded (as TorchRec wraps its dense part), with a
        comm hook that sums instead of averaging, since every worker's loss is its share of
        the step's. Nothing to do with one worker, or a model without a dense module."""
        dense = model.replicated()
        if not self.distributed or dense is None:
            return
        if not isinstance(self.comm, TorchComm):
            raise TypeError(f"replicate: DDP needs a torch.distributed group, not {type(self.comm).__name__}")
        ddp = DistributedDataParallel(dense, forward_sync_buffers=False, gradient_as_bucket_view=True)
        ddp.register_comm_hook(self.comm.collectives, _summed_bucket)
        model.encoder.replicate_through(ddp)

    def finish_backward(self, loss: Tensor) -> float:
        """After this worker's backward (the dense gradients summed by DDP by its end, table rows'
        gradients already with their owners): the step's loss, ``loss`` (this worker's share,
        detached) summed over the workers, the same on every worker (a non-finite one stops
        all of them)."""
        if not self.distributed:
            return float(loss)
        return float(self.comm.all_reduce_(loss.reshape(1).to(torch.float64))[0])

    def summed(self, values: Tensor) -> Tensor:
        """``values`` (a worker's partial sums) added up over the workers, in place."""
        return self.comm.all_reduce_(values)

    # -- evaluation --------------------------------------------------------------------------

    def ranked_users(self, users: np.ndarray) -> np.ndarray:
        """The evaluated users this worker ranks: those it owns (every one in local mode)."""
        return users[self._user_owner[users] == self._rank] if self.distributed else users

    def whole_item_vectors(self, vectors: Tensor) -> Tensor:
        """Every item's scoring vector from a worker whose graph is a receptive field, exact at
        its own items only: its own rows, gathered in global order."""
        return self.placement.gather(ITEM, vectors.index_select(0, self.placement.owned(ITEM).to(vectors.device)))

    # -- checkpoints -------------------------------------------------------------------------

    def whole_state(self, model: nn.Module) -> dict[str, Tensor]:
        """``model``'s state with every sharded table gathered whole (global row order), so a state
        written by N workers loads at any M and in local mode. Collective."""
        return self._convert(model, model.state_dict(), ShardedTable.whole)

    def own_state(self, model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A whole-table ``state`` (``whole_state``) cut to the rows this worker owns."""
        return self._convert(model, state, ShardedTable.own)

    def _convert(self, model: nn.Module, state: dict[str, Tensor],
                 convert: Callable[[ShardedTable, Tensor], Tensor]) -> dict[str, Tensor]:
        if not self.distributed:
            return state
        state = dict(state)
        for name, module in model.named_modules():
            if isinstance(module, ShardedTable):
                state[f"{name}.weight"] = convert(module, state[f"{name}.weight"])
        return state


def _summed_bucket(state, bucket):  # type: ignore[no-untyped-def]
    """DDP comm hook: all-reduce a bucket of gradients to their sum (DDP's own hook averages).

    (state: the communicator's ``Collectives``, so a benchmark counts these bytes too; bucket:
    ``torch.distributed.GradBucket`` -> a future of the summed buffer.) Unannotated: DDP
    accepts a hook whose ``bucket`` annotation is ``GradBucket`` or none, and with postponed
    annotations it would see the string."""
    work = state.all_reduce(bucket.buffer())
    return work.get_future().then(lambda fut: fut.value()[0])
