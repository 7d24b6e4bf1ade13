"""Row ownership and row-sharded tables (the owner rule, docs/architecture.md).

Every user row and item row (preference tables, θ, raw features) belongs to one
rank. In full-graph mode a step needs every row: table rows, and the d-wide
projections that each owner computes from its own raw features, are gathered
(``Placement.gather``: all-gather, then reorder to global ids) and the gradient of
each row returns to its owner. With one rank the placement is the identity and the
tables are ordinary :class:`LocalTable` s, so local mode runs the same code.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from margo_dist.dist.comm import Communicator, LocalComm
from margo_dist.model.tables import LocalTable, Table, TableSpec

USER, ITEM, NODE = "user", "item", "node"  # NODE: users then items, as the ID baselines number them


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
        self._counts = [ids.size for ids in self.ids_by_rank]
        rank_order = np.concatenate(self.ids_by_rank) if self.ids_by_rank else np.zeros(0, np.int64)
        # position of each global id in the rank-concatenated order of a gather
        self.to_global = torch.from_numpy(np.argsort(rank_order, kind="stable"))

    @property
    def num_rows(self) -> int:
        return self.owner.size

    def owned(self, rank: int) -> Tensor:
        """Global ids owned by ``rank``, ascending (int64)."""
        return torch.from_numpy(self.ids_by_rank[rank])

    def counts(self) -> list[int]:
        return self._counts


class Placement:
    """This rank's view of the owner rule: which users and items it owns, and how to gather."""

    def __init__(self, comm: Communicator, user_owner: np.ndarray, item_owner: np.ndarray) -> None:
        self.comm = comm
        n = comm.world_size
        self.spaces = {USER: RowOwnership(user_owner, n, USER), ITEM: RowOwnership(item_owner, n, ITEM),
                       NODE: RowOwnership(np.concatenate([user_owner, item_owner]), n, NODE)}

    @classmethod
    def single(cls, n_users: int, n_items: int) -> "Placement":
        """Local mode: one rank owns everything."""
        return cls(LocalComm(), np.zeros(n_users, np.int64), np.zeros(n_items, np.int64))

    @property
    def distributed(self) -> bool:
        return self.comm.world_size > 1

    def owned(self, space: str) -> Tensor:
        return self.spaces[space].owned(self.comm.rank)

    def gather(self, space: str, local: Tensor) -> Tensor:
        """Every rank's owned rows [n_own, F] -> all rows in global id order [n, F] (differentiable)."""
        if not self.distributed:
            return local
        ownership = self.spaces[space]
        rows = self.comm.gather_rows(local, ownership.counts())
        return rows.index_select(0, ownership.to_global.to(rows.device))

    def table(self, spec: TableSpec, space: str) -> Table:
        """A table of ``spec`` whose rows of ``space`` are placed by the owner rule."""
        if not self.distributed:
            return LocalTable(spec)
        return ShardedTable(spec, self, space)


class ShardedTable(Table):
    """The rows of a table that this rank owns, as one Parameter; other rows are gathered.

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

    def whole(self, owned: Tensor) -> Tensor:
        """A per-row tensor of this worker's rows [n_own, ...] -> all rows in global order (collective)."""
        return self.placement.gather(self.space, owned.detach())

    def own(self, whole: Tensor) -> Tensor:
        """All rows of a per-row tensor [num_rows, ...] -> the rows this worker owns."""
        return whole.index_select(0, self.owned_ids)

    def lookup(self, ids: Tensor) -> Tensor:
        return self.all_rows().index_select(0, ids)

    @torch.no_grad()
    def reset(self, std: float, seed: int) -> None:
        self.spec = self.spec.with_init(std, seed)
        self.weight.copy_(self.spec.rows_for(self.owned_ids))
