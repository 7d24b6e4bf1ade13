"""Row tables behind one small interface, so the distributed mode can shard them.

The model reads rows by id (``lookup``) or all rows (``all_rows``, full-graph mode)
and never touches the storage. ``LocalTable`` keeps every row in one Parameter that
the dense optimiser updates; a row-sharded implementation keeps only the rows its
worker owns and applies ``sparse_update`` to the rows a step touched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


class Table(nn.Module, ABC):
    """``num_rows`` x ``dim`` rows addressed by global id."""

    num_rows: int
    dim: int

    @abstractmethod
    def lookup(self, ids: Tensor) -> Tensor:
        """Rows ``ids`` (differentiable), shape [len(ids), dim]."""

    @abstractmethod
    def all_rows(self) -> Tensor:
        """Every row (differentiable), shape [num_rows, dim]."""

    @abstractmethod
    def sparse_update(self, ids: Tensor, delta: Tensor) -> None:
        """Add ``delta`` [len(ids), dim] to rows ``ids`` outside autograd."""

    @abstractmethod
    def reset(self, std: float, generator: torch.Generator) -> None:
        """Re-draw every row from N(0, std^2) with ``generator``."""


class LocalTable(Table):
    """All rows in one process, as one dense Parameter."""

    def __init__(self, num_rows: int, dim: int, init: Tensor) -> None:
        super().__init__()
        if tuple(init.shape) != (num_rows, dim):
            raise ValueError(f"table init has shape {tuple(init.shape)}, expected {(num_rows, dim)}")
        self.num_rows = num_rows
        self.dim = dim
        self.weight = nn.Parameter(init.clone())

    def lookup(self, ids: Tensor) -> Tensor:
        # index_select, not weight[ids]: the backward of advanced indexing sums duplicate
        # ids in a thread-dependent order on CPU, so runs would not repeat bit for bit
        return self.weight.index_select(0, ids)

    def all_rows(self) -> Tensor:
        return self.weight

    @torch.no_grad()
    def sparse_update(self, ids: Tensor, delta: Tensor) -> None:
        self.weight.index_add_(0, ids, delta.to(self.weight.dtype))

    @torch.no_grad()
    def reset(self, std: float, generator: torch.Generator) -> None:
        self.weight.copy_(torch.randn(self.weight.shape, generator=generator, dtype=self.weight.dtype) * std)
