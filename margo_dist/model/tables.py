"""Row tables behind one small interface, so the distributed mode can shard them.

The model reads rows by id (``lookup``) or all rows (``all_rows``, full-graph mode)
and never touches the storage. ``LocalTable`` keeps every row in one Parameter that
the dense optimiser updates; ``margo_dist.dist.sharding.ShardedTable`` keeps only the
rows its worker owns (the same optimiser updates them there) and gathers the rest.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor, nn

ROWS_PER_CHUNK = 4096  # rows drawn from one generator seed; any row range needs only its chunks


@dataclass(frozen=True)
class TableSpec:
    """A table's shape and initial values: rows ~ N(0, std^2), drawn per chunk of rows.

    Chunk ``c`` (rows ``c * ROWS_PER_CHUNK`` ...) comes from its own generator seeded by
    (``seed``, ``name``, ``c``), so any row range can be evaluated alone and equals the
    same rows of the whole table: a worker that owns some rows builds exactly the
    values local mode has there, without materialising the rest.
    """

    name: str
    num_rows: int
    dim: int
    std: float
    seed: int

    @classmethod
    def xavier(cls, name: str, num_rows: int, dim: int, seed: int) -> "TableSpec":
        """Xavier-normal scale of a [num_rows, dim] matrix."""
        return cls(name, num_rows, dim, math.sqrt(2.0 / (num_rows + dim)), seed)

    def with_init(self, std: float, seed: int) -> "TableSpec":
        return replace(self, std=std, seed=seed)

    def rows(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Initial values of rows ``start:stop`` (all rows by default), [stop - start, dim] float32."""
        stop = self.num_rows if stop is None else stop
        if not 0 <= start <= stop <= self.num_rows:
            raise ValueError(f"table {self.name}: row range {start}:{stop} is outside 0:{self.num_rows}")
        parts = []
        for c in range(start // ROWS_PER_CHUNK, -(-stop // ROWS_PER_CHUNK)):
            lo, hi = c * ROWS_PER_CHUNK, min((c + 1) * ROWS_PER_CHUNK, self.num_rows)
            gen = torch.Generator().manual_seed(self._chunk_seed(c))
            chunk = torch.randn((hi - lo, self.dim), generator=gen) * self.std
            parts.append(chunk[max(start, lo) - lo: min(stop, hi) - lo])
        return torch.cat(parts) if parts else torch.empty((0, self.dim))

    def rows_for(self, ids: Tensor) -> Tensor:
        """Initial values of the rows ``ids`` (any order, int64 [n]), [n, dim]: only their chunks are drawn."""
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_rows):
            raise ValueError(f"table {self.name}: ids outside 0:{self.num_rows}")
        out = torch.empty((ids.numel(), self.dim))
        chunk_of = torch.div(ids, ROWS_PER_CHUNK, rounding_mode="floor")
        for c in torch.unique(chunk_of).tolist():
            where = torch.nonzero(chunk_of == c).flatten()
            lo = c * ROWS_PER_CHUNK
            out[where] = self.rows(lo, min(lo + ROWS_PER_CHUNK, self.num_rows))[ids[where] - lo]
        return out

    def _chunk_seed(self, chunk: int) -> int:
        digest = hashlib.blake2b(f"{self.seed}/{self.name}/{chunk}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") & (2**63 - 1)


class Table(nn.Module, ABC):
    """``num_rows`` x ``dim`` rows addressed by global id."""

    num_rows: int
    dim: int

    @abstractmethod
    def lookup(self, ids: Tensor) -> Tensor:
        """Rows ``ids`` (differentiable), shape [len(ids), dim]."""

    def start_lookup(self, ids: Tensor) -> "Lookup":
        """``lookup(ids)`` begun now; ``wait()`` returns the rows. A sharded table's rows travel
        while the caller computes (and their gradient while the backward runs on)."""
        return Lookup(self.lookup(ids))

    @abstractmethod
    def all_rows(self) -> Tensor:
        """Every row (differentiable), shape [num_rows, dim]."""

    @abstractmethod
    def lookup_own(self, ids: Tensor) -> Tensor:
        """Rows ``ids`` (global ids this rank holds: any id in local mode), differentiable; no
        communication."""

    @abstractmethod
    def own_rows(self) -> Tensor:
        """The rows this rank holds (all rows in local mode), in ascending global id order."""

    @abstractmethod
    def reset(self, std: float, seed: int) -> None:
        """Re-draw every row from N(0, std^2), seeded by ``seed`` (per chunk, see TableSpec)."""


class Lookup:
    """Rows of a table lookup, ready (``rows``) or still to come (``finish`` makes them)."""

    def __init__(self, rows: Tensor | None = None, finish: Callable[[], Tensor] | None = None) -> None:
        self._rows, self._finish = rows, finish

    def wait(self) -> Tensor:
        if self._rows is None:
            assert self._finish is not None
            self._rows, self._finish = self._finish(), None
        return self._rows


class LocalTable(Table):
    """All rows in one process, as one dense Parameter."""

    def __init__(self, spec: TableSpec) -> None:
        super().__init__()
        self.spec = spec
        self.num_rows = spec.num_rows
        self.dim = spec.dim
        self.weight = nn.Parameter(spec.rows())

    def lookup(self, ids: Tensor) -> Tensor:
        # index_select, not weight[ids]: the backward of advanced indexing sums duplicate
        # ids in a thread-dependent order on CPU, so runs would not repeat bit for bit
        return self.weight.index_select(0, ids)

    def all_rows(self) -> Tensor:
        return self.weight

    def own_rows(self) -> Tensor:
        return self.weight

    def lookup_own(self, ids: Tensor) -> Tensor:
        return self.lookup(ids)

    @torch.no_grad()
    def reset(self, std: float, seed: int) -> None:
        self.spec = self.spec.with_init(std, seed)
        self.weight.copy_(self.spec.rows())
