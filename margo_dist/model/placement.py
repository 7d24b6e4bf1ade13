"""Where a model's per-row state lives: the interface the model reads, and one process's answer.

The model never asks how many workers there are. It reads a table's rows, gathers every
node's input rows, fetches a few ids' rows, or asks the owners of some items to compute
their rows, all through a :class:`RowPlacement`. :class:`LocalPlacement` is local mode
(one process owns every row, so each of those is a local read); the N-worker placement
by the owner rule is ``margo_dist.dist.sharding.Placement``. This module is what both
import, so the model does not import the distributed package.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor

from margo_dist.model.tables import LocalTable, Table, TableSpec

USER, ITEM, NODE = "user", "item", "node"  # NODE: users then items, as the ID baselines number them


class Pending(Protocol):
    """Rows on their way: ``wait()`` returns them."""

    def wait(self) -> Tensor: ...


class Ready:
    """Rows that are already here (what a one-process gather returns)."""

    def __init__(self, rows: Tensor) -> None:
        self._rows = rows

    def wait(self) -> Tensor:
        return self._rows


class RowPlacement(Protocol):
    """Which rows of the user, item and node spaces this worker holds, and how to reach the rest.

    Every method is differentiable: a row's gradient returns to the worker that holds it.
    """

    rank: int  # this worker's number (0 in local mode)
    rows_asked: int  # rows asked of other owners (``fetch``, ``fetch_computed``): a benchmark's counter
    rows_computed: int  # rows computed for ``fetch_computed``

    @property
    def distributed(self) -> bool: ...

    def owned(self, space: str) -> Tensor:
        """Global ids of the rows this worker holds, ascending."""

    def local_index(self, space: str) -> Tensor:
        """Each global id's position among its owner's rows."""

    def table(self, spec: TableSpec, space: str) -> Table:
        """A table of ``spec`` whose rows of ``space`` are placed here."""

    def gather(self, space: str, local: Tensor) -> Tensor:
        """This worker's rows [n_own, F] (every worker's, together) -> all rows in global order [n, F]."""

    def start_gather(self, space: str, local: Tensor) -> Pending:
        """``gather`` begun now; the rows travel while the caller computes."""

    def start_gather_columns(self, space: str, local: Tensor) -> Pending:
        """As ``start_gather``, this worker's block of columns (``columns``) only: [n, c]."""

    def columns(self, width: int) -> list[int]:
        """Where each worker's block of ``width`` columns starts, and the end."""

    def fetch(self, space: str, local: Tensor, ids: Tensor) -> Tensor:
        """Rows ``ids`` (global, repeats allowed) of a per-row tensor held as ``local`` [n_own, F]."""

    def fetch_computed(self, space: str, ids: Tensor, compute: Callable[[Tensor], Tensor],
                       tally: bool = True) -> Tensor:
        """Rows ``ids`` of a per-row function that the owners evaluate: ``compute(local_rows)``."""

    def summed(self, t: Tensor) -> Tensor:
        """``t`` summed over the workers (each addend gets the summed gradient)."""


class LocalPlacement:
    """Local mode: one process owns every row, so every gather and fetch is a local read."""

    distributed = False
    rank = 0

    def __init__(self, n_users: int, n_items: int) -> None:
        self.sizes = {USER: n_users, ITEM: n_items, NODE: n_users + n_items}
        self.rows_asked = 0  # no other owner to ask
        self.rows_computed = 0

    def owned(self, space: str) -> Tensor:
        return torch.arange(self.sizes[space])

    def local_index(self, space: str) -> Tensor:
        return torch.arange(self.sizes[space])

    def table(self, spec: TableSpec, space: str) -> Table:
        if spec.num_rows != self.sizes[space]:
            raise ValueError(f"table {spec.name} has {spec.num_rows} rows, the {space} space {self.sizes[space]}")
        return LocalTable(spec)

    def gather(self, space: str, local: Tensor) -> Tensor:
        return local

    def start_gather(self, space: str, local: Tensor) -> Pending:
        return Ready(local)

    def start_gather_columns(self, space: str, local: Tensor) -> Pending:
        return Ready(local)

    def columns(self, width: int) -> list[int]:
        return [0, width]

    def fetch(self, space: str, local: Tensor, ids: Tensor) -> Tensor:
        return local.index_select(0, ids)

    def fetch_computed(self, space: str, ids: Tensor, compute: Callable[[Tensor], Tensor],
                       tally: bool = True) -> Tensor:
        """``compute`` evaluated once per distinct id, its rows repeated as ``ids`` repeats them."""
        unique, inverse = torch.unique(ids, return_inverse=True)
        self.rows_computed += unique.numel() if tally else 0
        return compute(unique).index_select(0, inverse.view(-1).to(ids.device)).view(*ids.shape, -1)

    def summed(self, t: Tensor) -> Tensor:
        return t
