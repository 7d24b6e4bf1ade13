"""Checkpoints: one file of owned table rows per worker, then the leader's commit record.

A checkpoint with sequence number ``seq`` is

- ``checkpoint-shards/<seq>/rank<r>.pt`` from every worker r: for each table (user
  preferences, θ, DRAGON's user weights, ID embeddings) the global ids of the rows r
  owns, those rows, and their Adam moments;
- ``checkpoint.pt`` from the leader, written after every shard file is there: the
  coordinator's state, the dense parameters and the rest of the optimiser state, the
  sampler's RNG, the records, the number of workers and ``seq``.

``checkpoint.pt`` is written atomically and last, so it is the commit: a worker killed
at any point leaves the previous checkpoint whole (its shard files are in their own
folder, removed only after the next commit). Rows carry their global ids, so a
checkpoint written by N workers loads at any M, and in local mode (one worker, one
shard file).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from margo_dist.data import io as mio
from margo_dist.dist.comm import Communicator
from margo_dist.dist.sharding import ShardedTable
from margo_dist.errors import MargoError
from margo_dist.model.tables import Table

CHECKPOINT, SHARDS = "checkpoint.pt", "checkpoint-shards"


class RunFiles(Protocol):
    """Where a run's files live (``train.rundir.RunDir``): names are relative to the run folder."""

    def path(self, name: str) -> str:
        """The URL of ``name``."""

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        """Write ``state`` (tensors included) to ``name`` atomically."""

    def load_state(self, name: str) -> dict[str, Any]:
        """Read what ``save_state`` wrote to ``name``."""


def shard_file(seq: int, rank: int) -> str:
    """Worker ``rank``'s file of checkpoint ``seq``, relative to the run folder."""
    return f"{SHARDS}/{seq}/rank{rank}.pt"


def _tables(model: nn.Module) -> dict[str, tuple[Table, Tensor]]:
    """Each table's weight name -> (table, the global ids of the rows this worker holds)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, Table):
            ids = module.owned_ids if isinstance(module, ShardedTable) else torch.arange(module.num_rows)
            out[f"{name}.weight"] = (module, ids)
    return out


def _param_index(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Parameter name -> its index in the optimiser's state dict."""
    order = {id(p): k for k, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
    return {name: order[id(p)] for name, p in model.named_parameters() if id(p) in order}


def _per_row(value: Any) -> bool:
    return torch.is_tensor(value) and value.dim() > 0


def save(run: RunFiles, comm: Communicator, model: nn.Module, optimizer: torch.optim.Optimizer,
         record: dict[str, Any], seq: int) -> None:
    """Write checkpoint ``seq``: every worker its rows, then the leader ``record`` plus the rest.

    Collective: every worker calls it at the same point.
    """
    state = dict(model.state_dict())
    opt = optimizer.state_dict()
    index = _param_index(model, optimizer)
    moments = {k: dict(v) for k, v in opt["state"].items()}
    rows: dict[str, dict[str, Any]] = {}
    for name, (_, ids) in _tables(model).items():
        entry: dict[str, Any] = {"ids": ids, "weight": state.pop(name)}
        k = index.get(name)
        if k is not None and k in moments:  # no entry before a parameter's first gradient
            entry["moments"] = {m: moments[k].pop(m) for m in list(moments[k]) if _per_row(moments[k][m])}
        rows[name] = entry
    run.save_state(shard_file(seq, comm.rank), {"seq": seq, "rank": comm.rank, "world_size": comm.world_size,
                                                "tables": rows})
    comm.barrier()  # every shard file is whole before the commit
    if comm.is_leader:
        run.save_state(CHECKPOINT, {**record, "model": state, "optimizer": {**opt, "state": moments}, "seq": seq,
                                    "world_size": comm.world_size})
        for old in mio.listdir(run.path(SHARDS)):
            if old != str(seq):
                mio.remove(run.path(f"{SHARDS}/{old}"))
    comm.barrier()


def provenance(ckpt: dict[str, Any], comm: Communicator) -> str:
    """Which world size wrote the checkpoint record ``ckpt`` and which reads it (a resume's log)."""
    return f"written by {ckpt['world_size']} worker(s), read by {comm.world_size}"


def read_record(run: RunFiles) -> dict[str, Any]:
    """The leader's commit record of the latest checkpoint (coordinator, RNG, records, ...)."""
    ckpt = run.load_state(CHECKPOINT)
    if "coordinator" not in ckpt:
        raise MargoError(f"{run.path(CHECKPOINT)} was written by an older margo-dist: delete it, or set "
                         f"run.resume=false to start the run afresh")
    return ckpt


def load(run: RunFiles, model: nn.Module, optimizer: torch.optim.Optimizer,
         record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load the committed checkpoint (``record``, if already read) into ``model`` and ``optimizer``
    (this worker's rows of each table); returns the leader's record."""
    ckpt = read_record(run) if record is None else record
    if "seq" not in ckpt:
        raise MargoError(f"{run.path(CHECKPOINT)} holds whole tables (written by an older margo-dist before "
                         f"per-worker checkpoint files): delete it, or set run.resume=false to start afresh")
    seq, writers = int(ckpt["seq"]), int(ckpt["world_size"])
    parts = [run.load_state(shard_file(seq, r))["tables"] for r in range(writers)]
    state = dict(ckpt["model"])
    opt = ckpt["optimizer"]
    moments = {k: dict(v) for k, v in opt["state"].items()}
    index = _param_index(model, optimizer)
    for name, (table, ids) in _tables(model).items():
        state[name] = _whole(name, [(p[name]["ids"], p[name]["weight"]) for p in parts], table.num_rows, run)[ids]
        if "moments" in parts[0][name]:
            for m in parts[0][name]["moments"]:
                whole = _whole(f"{name} ({m})", [(p[name]["ids"], p[name]["moments"][m]) for p in parts],
                               table.num_rows, run)
                moments[index[name]][m] = whole[ids]
    model.load_state_dict(state)
    optimizer.load_state_dict({**opt, "state": moments})
    return ckpt


def _whole(name: str, parts: list[tuple[Tensor, Tensor]], num_rows: int, run: RunFiles) -> Tensor:
    """Every worker's rows of one table, put back in global id order."""
    if sum(ids.numel() for ids, _ in parts) != num_rows:
        raise MargoError(f"the checkpoint shards in {run.path(SHARDS)} hold {sum(i.numel() for i, _ in parts)} "
                         f"rows of {name}, the model has {num_rows}")
    first = parts[0][1]
    whole = first.new_empty((num_rows, *first.shape[1:]))
    for ids, rows in parts:
        whole.index_copy_(0, ids, rows)
    return whole
