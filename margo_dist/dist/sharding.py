"""Row ownership and row-sharded tables (the owner rule, docs/architecture.md).

Every user row and item row (preference tables, θ, raw features) belongs to one
rank. In full-graph mode a step needs every row of the encoder's input: each owner
computes its own users' and items' input rows (normalised preferences, d-wide
projections of its raw features) and they are gathered (``Placement.gather``:
all-gather, then reorder to global ids); rows of a few ids (the batch's θ rows, the
regularised preferences) are fetched from their owners (``Placement.fetch``:
all-to-all). Either way the gradient of each row returns to its owner. The whole-graph
training step gathers the input rows by columns instead (``Placement.start_gather_columns``):
propagation is linear in each column, so each rank propagates every node over its block
of columns (``Placement.columns``) and the ranks' partial ratings are summed. With one rank
the placement is the identity and the tables are ordinary :class:`LocalTable` s, so local
mode runs the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from margo_dist.dist.comm import Communicator, PendingRows
from margo_dist.model.placement import ITEM, NODE, USER
from margo_dist.model.tables import LocalTable, Lookup, Table, TableSpec

__all__ = ["ITEM", "NODE", "USER", "Placement", "RowOwnership", "ShardedTable"]
# a sharded table this small (all ranks' rows together) is gathered whole for a lookup
GATHER_WHOLE_BYTES = 1 << 20


class RowOwnership:
    """The rank that owns each row of one id space."""

    def __init__(self, owner: np.ndarray, world_size: int, name: str) -> None:
        owner = np.asarray(owner, dtype=np.int64).ravel()
        if owner.size and (owner.min() < 0 or owner.max() >= world_size):
            raise ValueError(f"{name} owners lie in [{owner.min()}, {owner.max()}], outside the world of "
                             f"{world_size} ranks")
        self.name = name
        self.owner = owner
        self.world_size = world_size
        self.ids_by_rank = [np.flatnonzero(owner == r) for r in range(world_size)]
        self.owner_t = torch.from_numpy(owner)
        # position of each global id among its owner's rows
        local = np.empty(owner.size, np.int64)
        for ids in self.ids_by_rank:
            local[ids] = np.arange(ids.size)
        self.local_index = torch.from_numpy(local)
        # a gather pads every rank's block to the largest: global id -> its row in the gathered buffer
        self.width = max((ids.size for ids in self.ids_by_rank), default=0)
        self.in_gather = self.owner_t * self.width + self.local_index

    @property
    def num_rows(self) -> int:
        return self.owner.size

    def owned(self, rank: int) -> Tensor:
        """Global ids owned by ``rank``, ascending (int64)."""
        return torch.from_numpy(self.ids_by_rank[rank])


class Placement:
    """This rank's view of the owner rule: which users and items it owns, and how to gather."""

    def __init__(self, comm: Communicator, user_owner: np.ndarray, item_owner: np.ndarray) -> None:
        self.comm = comm
        n = comm.world_size
        self.spaces = {USER: RowOwnership(user_owner, n, USER), ITEM: RowOwnership(item_owner, n, ITEM),
                       NODE: RowOwnership(np.concatenate([user_owner, item_owner]), n, NODE)}
        self.rows_asked = 0  # rows this rank asked of other owners (``fetch``, ``fetch_computed``)
        self.rows_computed = 0  # rows this rank computed for ``fetch_computed`` (its own asks included)


    @property
    def distributed(self) -> bool:
        return self.comm.world_size > 1

    @property
    def rank(self) -> int:
        return self.comm.rank

    def owned(self, space: str) -> Tensor:
        return self.spaces[space].owned(self.comm.rank)

    def local_index(self, space: str) -> Tensor:
        """Each global id's position among its owner's rows."""
        return self.spaces[space].local_index

    def summed(self, t: Tensor) -> Tensor:
        """``t`` summed over the ranks, differentiable (each rank's addend gets the summed gradient)."""
        return self.comm.summed(t)

    def gather(self, space: str, local: Tensor) -> Tensor:
        """Every rank's owned rows [n_own, F] -> all rows in global id order [n, F] (differentiable)."""
        return self.start_gather(space, local).wait()

    def start_gather(self, space: str, local: Tensor) -> "Gathering":
        """``gather`` begun now and finished by ``wait()``: the rows travel while the caller computes."""
        if not self.distributed:
            return Gathering(None, local, None)
        ownership = self.spaces[space]
        return Gathering(self.comm.start_gather(local, ownership.width), None, ownership.in_gather)

    def columns(self, width: int) -> list[int]:
        """Where each rank's block of ``width`` columns starts, and the end: ``world_size + 1``
        offsets, the blocks as even as whole columns allow (rank r: ``[b[r], b[r + 1])``)."""
        n = self.comm.world_size
        return [r * width // n for r in range(n + 1)]

    def start_gather_columns(self, space: str, local: Tensor) -> "Gathering":
        """Every rank's owned rows [n_own, F] -> all rows in global id order, this rank's block of
        columns (``columns(F)``) only: [n, c], differentiable. Begun now, finished by ``wait()``."""
        if not self.distributed:
            return Gathering(None, local, None)
        ownership = self.spaces[space]
        return Gathering(self.comm.start_gather_columns(local, ownership.width, self.columns(local.shape[1])),
                         None, ownership.in_gather)

    def fetch(self, space: str, local: Tensor, ids: Tensor) -> Tensor:
        """Rows ``ids`` (global, any order, repeats allowed) of a per-row tensor whose rows this
        rank holds as ``local`` [n_own, F] -> [len(ids), F], differentiable.

        Each distinct id is asked of its owner once (counts, then ids, then rows, by
        all-to-all); the gradient of a row returns to its owner, summed over its uses.
        """
        if not self.distributed:
            return local.index_select(0, ids)
        request = self._request(space, ids)
        rows = self.comm.fetch_rows(local, request.asked.to(local.device), request.send_counts, request.recv_counts)
        return request.arrange(rows, ids)

    def fetch_computed(self, space: str, ids: Tensor, compute: Callable[[Tensor], Tensor],
                       tally: bool = True) -> Tensor:
        """Rows ``ids`` (global, repeats allowed) of a per-row function that owners evaluate:
        ``compute(local_rows)`` [n, F] for the local indices of rows this rank owns (an
        owner's projection of its items' raw features, say) -> [len(ids), F], differentiable.

        Each owner computes each row asked of it once, however many ranks ask for it (the
        rows are deduplicated over the requesters), and the gradients of a row from all its
        requesters are summed before they flow back into ``compute``. ``tally``: count the
        rows in ``rows_asked`` / ``rows_computed`` (the projections' counters).
        """
        if not self.distributed:
            unique, inverse = torch.unique(ids, return_inverse=True)
            self.rows_computed += unique.numel() if tally else 0
            return compute(unique).index_select(0, inverse.view(-1).to(ids.device)).view(*ids.shape, -1)
        request = self._request(space, ids, tally)
        wanted, inverse = torch.unique(request.asked, return_inverse=True)
        self.rows_computed += wanted.numel() if tally else 0
        rows = compute(wanted)
        fetched = self.comm.fetch_rows(rows, inverse.to(rows.device), request.send_counts, request.recv_counts)
        return request.arrange(fetched, ids)

    def _request(self, space: str, ids: Tensor, tally: bool = True) -> "_Request":
        """Exchange which rows each rank wants of each owner: counts, then local ids (all-to-all)."""
        ownership, comm = self.spaces[space], self.comm
        unique, inverse = torch.unique(ids.cpu(), return_inverse=True)
        owner = ownership.owner_t.index_select(0, unique)
        order = torch.argsort(owner, stable=True)
        want = torch.bincount(owner, minlength=comm.world_size)
        recv_counts = [int(c) for c in want.tolist()]
        self.rows_asked += sum(recv_counts) - recv_counts[comm.rank] if tally else 0
        send_counts = [int(c) for c in comm.all_to_all(want, [1] * comm.world_size, [1] * comm.world_size)]
        asked = comm.all_to_all(ownership.local_index.index_select(0, unique.index_select(0, order)),
                                recv_counts, send_counts)
        # rows arrive in the order asked (grouped by owner); back to sorted unique ids, then to ids
        position = torch.empty_like(order)
        position[order] = torch.arange(order.numel())
        return _Request(asked, send_counts, recv_counts, position.index_select(0, inverse.view(-1)))

    def table(self, spec: TableSpec, space: str) -> Table:
        """A table of ``spec`` whose rows of ``space`` are placed by the owner rule."""
        if not self.distributed:
            return LocalTable(spec)
        return ShardedTable(spec, self, space)


@dataclass
class _Request:
    """One exchange of row requests: the local rows others asked of this rank (grouped by
    asking rank, ``send_counts`` each), what this rank asked of each owner
    (``recv_counts``), and where each asked id's row lands among the rows received."""

    asked: Tensor
    send_counts: list[int]
    recv_counts: list[int]
    where: Tensor

    def arrange(self, rows: Tensor, ids: Tensor) -> Tensor:
        """Received rows (grouped by owner) -> the rows of ``ids`` in their order and shape."""
        return rows.index_select(0, self.where.to(rows.device)).view(*ids.shape, *rows.shape[1:])


class Gathering:
    """A ``Placement.gather`` in flight."""

    def __init__(self, pending: PendingRows | None, rows: Tensor | None, index: Tensor | None) -> None:
        self._pending, self._rows, self._index = pending, rows, index

    def wait(self) -> Tensor:
        """All rows in global id order [n, F]."""
        if self._pending is not None:
            buffer = self._pending.wait()
            assert self._index is not None
            self._rows = buffer.index_select(0, self._index.to(buffer.device))
            self._pending = None
        assert self._rows is not None
        return self._rows


class ShardedTable(Table):
    """The rows of a table that this rank owns, as one Parameter; other rows are gathered or fetched.

    The owned rows start as exactly those rows of the local table (``TableSpec.rows_for``)
    and the optimiser updates them here with the same dense Adam as local mode (exact,
    docs/architecture.md).
    """

    def __init__(self, spec: TableSpec, placement: Placement, space: str) -> None:
        super().__init__()
        if placement.spaces[space].num_rows != spec.num_rows:
            raise ValueError(f"table {spec.name} has {spec.num_rows} rows, the {space} space "
                             f"{placement.spaces[space].num_rows}")
        self.spec = spec
        self.placement = placement
        self.space = space
        self.num_rows = spec.num_rows
        self.dim = spec.dim
        self.owned_ids = placement.owned(space)
        self.weight = nn.Parameter(spec.rows_for(self.owned_ids))

    def all_rows(self) -> Tensor:
        return self.placement.gather(self.space, self.weight)

    def own_rows(self) -> Tensor:
        return self.weight

    def whole(self, owned: Tensor) -> Tensor:
        """A per-row tensor of this worker's rows [n_own, ...] -> all rows in global order (collective)."""
        return self.placement.gather(self.space, owned.detach())

    def own(self, whole: Tensor) -> Tensor:
        """All rows of a per-row tensor [num_rows, ...] -> the rows this worker owns."""
        return whole.index_select(0, self.owned_ids)

    def lookup(self, ids: Tensor) -> Tensor:
        return self.start_lookup(ids).wait()

    def start_lookup(self, ids: Tensor) -> Lookup:
        if self.weight.numel() * self.weight.element_size() * self.placement.comm.world_size <= GATHER_WHOLE_BYTES:
            # a small table (θ: M floats a row) moves whole in one collective; a fetch takes three
            gathering = self.placement.start_gather(self.space, self.weight)
            return Lookup(finish=lambda: gathering.wait().index_select(0, ids))
        return Lookup(self.placement.fetch(self.space, self.weight, ids))

    def lookup_own(self, ids: Tensor) -> Tensor:
        ownership, host_ids = self.placement.spaces[self.space], ids.cpu()
        where = ownership.local_index.index_select(0, host_ids)
        if bool((ownership.owner_t.index_select(0, host_ids) != self.placement.comm.rank).any()):
            raise ValueError(f"table {self.spec.name}: lookup_own asked for rows that rank "
                             f"{self.placement.comm.rank} does not hold")
        return self.weight.index_select(0, where.to(self.weight.device))

    @torch.no_grad()
    def reset(self, std: float, seed: int) -> None:
        self.spec = self.spec.with_init(std, seed)
        self.weight.copy_(self.spec.rows_for(self.owned_ids))
