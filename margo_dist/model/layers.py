"""Layer maths shared by full-graph and sampled-block computation."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from margo_dist.graph.tensors import CSR, EdgeList


class _SpMM(torch.autograd.Function):
    """``A @ x`` with the gradient ``A^T @ g`` from a prebuilt transpose (A is constant)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, a: CSR, a_t: CSR) -> Tensor:  # type: ignore[override]
        ctx.a_t = a_t
        return csr_product(a, x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        return csr_product(ctx.a_t, grad.contiguous()), None, None


def csr_product(a: CSR, x: Tensor) -> Tensor:
    """``A @ x`` for a CSR matrix A [R, C] and dense x [C, F]; rows without entries are 0.

    Each row of A is a weighted bag of rows of x, which is what ``embedding_bag`` sums
    (2-4x faster on CPU than ``torch.sparse.mm`` with a CSR tensor, see ``CSR``).
    """
    if x.shape[0] != a.n_cols:
        raise ValueError(f"csr_product: x has {x.shape[0]} rows, the matrix has {a.n_cols} columns")
    return nn.functional.embedding_bag(a.indices, x, a.indptr, mode="sum", per_sample_weights=a.weights.to(x.dtype),
                                       include_last_offset=True)


def propagate(x_src: Tensor, edges: EdgeList) -> Tensor:
    """``out[d] = sum_{e: dst[e]=d} w[e] * x_src[src[e]]``.

    x_src: [n_src, F]; returns [n_dst, F]; rows with no incoming edge are zero. The
    same call serves the whole graph and a sampled block (both are edge lists).
    """
    if x_src.shape[0] != edges.n_src:
        raise ValueError(f"propagate: x_src has {x_src.shape[0]} rows, the edge list expects {edges.n_src}")
    if edges.src.numel() == 0:
        return x_src.new_zeros((edges.n_dst, x_src.shape[1]))
    return _SpMM.apply(x_src, edges.csr, edges.csr_t)


def residual_add(x_src: Tensor, h: Tensor, edges: EdgeList) -> Tensor:
    """``edges.select_dst(x_src) + h``: a propagation step's residual, [n_dst, F].

    When the dst nodes are runs of src positions (a sampled block's users, then its
    items) the sum is written in one pass, without first copying the selected rows.
    """
    if edges.dst_runs is None:
        return edges.select_dst(x_src) + h
    return _RunsAdd.apply(x_src, h, edges.dst_runs)


class _RunsAdd(torch.autograd.Function):
    """``cat([x_src[s:s+n] for s, n in runs]) + h``; the gradient of ``x_src`` is ``g`` at the
    runs' rows and zero elsewhere, written once."""

    @staticmethod
    def forward(ctx: Any, x_src: Tensor, h: Tensor, runs: list[tuple[int, int]]) -> Tensor:  # type: ignore[override]
        out = torch.empty_like(h)
        pos = 0
        for start, length in runs:
            torch.add(x_src[start: start + length], h[pos: pos + length], out=out[pos: pos + length])
            pos += length
        if pos != h.shape[0]:
            raise ValueError(f"residual_add: the runs cover {pos} rows, h has {h.shape[0]}")
        ctx.runs, ctx.n_src = runs, x_src.shape[0]
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        grad_x = grad.new_empty((ctx.n_src, *grad.shape[1:]))
        done, pos = 0, 0
        for start, length in ctx.runs:
            grad_x[done:start].zero_()
            grad_x[start: start + length] = grad[pos: pos + length]
            done, pos = start + length, pos + length
        grad_x[done:].zero_()
        return grad_x, grad, None


class MLP(nn.Module):
    """``W2 . leaky_relu(W1 f + b1) + b2``: the per-modality item projection (Eq. 1).

    ``compute_dtype`` bfloat16 runs both products under autocast: bf16 operands with
    float32 accumulation, float32 master weights (their gradients arrive in float32), and
    a float32 output, so everything after the projection (propagation, fusion, losses)
    stays float32. The input may be stored in float32, float16 or bfloat16.

    ``missing_rows``: the dataset has items without this modality, whose rows are zero;
    their projection is zero (the propagation then gives them their neighbours' view).
    """

    def __init__(self, d_in: int, d_hidden: int, d_out: int, generator: torch.Generator,
                 compute_dtype: torch.dtype = torch.float32, missing_rows: bool = False) -> None:
        super().__init__()
        self.w1 = nn.Parameter(_uniform((d_hidden, d_in), d_in, generator))
        self.b1 = nn.Parameter(_uniform((d_hidden,), d_in, generator))
        self.w2 = nn.Parameter(_uniform((d_out, d_hidden), d_hidden, generator))
        self.b2 = nn.Parameter(_uniform((d_out,), d_hidden, generator))
        self.compute_dtype = compute_dtype
        self.missing_rows = missing_rows

    def forward(self, f: Tensor) -> Tensor:
        if self.compute_dtype == self.w1.dtype:
            h = nn.functional.leaky_relu(nn.functional.linear(f.to(self.w1.dtype), self.w1, self.b1))
            out = nn.functional.linear(h, self.w2, self.b2)
        else:
            with torch.autocast(f.device.type, dtype=self.compute_dtype):
                h = nn.functional.leaky_relu(nn.functional.linear(f, self.w1, self.b1))
                out = nn.functional.linear(h, self.w2, self.b2)
            out = out.to(self.w2.dtype)
        if self.missing_rows:  # a zero row is a missing view (the dataset's rule): it projects to zero, not
            out = out * (f != 0).any(dim=1, keepdim=True).to(out.dtype)  # to the biases' made-up vector
        return out


def _uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> Tensor:
    """torch.nn.Linear's default init, drawn from an explicit generator."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound

