"""MARGO's loss terms as pure functions (docs/equations.md sections 3-7).

Shapes: B = batch of (u, i, j) triplets, M = modalities. Every function works on
any device and dtype the inputs have; none of them keeps state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
import torch.nn.functional as F

__all__ = [
    "bpr_loss",
    "reliability",
    "confidence",
    "calibration_loss",
    "embedding_reg",
]


def _check_shape(name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")


def bpr_loss(pos: Tensor, neg: Tensor, total: int | None = None) -> Tensor:
    """BPR (Eq. 4): mean over the batch of -log sigmoid(pos - neg).

    pos, neg: [B] fused scores y_ui, y_uj. Returns a scalar. Written as
    softplus(neg - pos), which is the same value without overflow. ``total`` (default
    B) is the size of the global batch this part belongs to: the sum is divided by it,
    so the parts of N workers add up to the mean over the whole batch.
    """
    if pos.dim() != 1:
        raise ValueError(f"pos must be 1-d [B], got shape {tuple(pos.shape)}")
    _check_shape("neg", neg, tuple(pos.shape))
    return F.softplus(neg - pos).sum() / (pos.numel() if total is None else total)


def reliability(r_pos: Tensor, r_neg: Tensor, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Modality reliability vector z (Eqs. 5-6) and which triplets have one.

    r_pos, r_neg: [B, M] modality ratings r_ui^m, r_uj^m.
    Returns z [B, M] = softmax_m(phi(r_pos - r_neg)) with phi(x) = x for x >= 0
    (ties count as agreeing) and -inf otherwise, and mask [B] bool, True where
    at least one modality agrees with BPR. Rows with mask False get z = 0: their
    softmax is undefined, and a zero row keeps NaN out of values and gradients.
    ``present`` [B, M] bool (None: all): the modalities both items of the triplet have;
    a missing one carries no evidence, so phi is -inf there (z = 0).
    """
    if r_pos.dim() != 2:
        raise ValueError(f"r_pos must be 2-d [B, M], got shape {tuple(r_pos.shape)}")
    _check_shape("r_neg", r_neg, tuple(r_pos.shape))
    delta = r_pos - r_neg
    agree = delta >= 0
    if present is not None:
        _check_shape("present", present, tuple(r_pos.shape))
        agree = agree & present
    mask = agree.any(dim=1)
    neg_inf = torch.full_like(delta, float("-inf"))
    logits = torch.where(agree, delta, neg_inf)
    # Undefined rows get finite logits so softmax (and its backward) stays finite;
    # the result is zeroed below.
    logits = torch.where(mask.unsqueeze(1), logits, torch.zeros_like(delta))
    z = torch.softmax(logits, dim=1)
    z = torch.where(mask.unsqueeze(1), z, torch.zeros_like(z))
    return z, mask


def confidence(y_pos: Tensor, y_neg: Tensor, tau: float) -> Tensor:
    """Confidence gamma (Eq. 7): tanh((y_pos - y_neg) / tau) where y_pos > y_neg, else 0.

    y_pos, y_neg: [B] fused scores. tau > 0 is the sensitivity (larger = smoother).
    """
    tau = float(tau)
    if not (tau > 0) or tau == float("inf"):
        raise ValueError(f"tau must be a finite number > 0, got tau={tau!r}")
    if y_pos.dim() != 1:
        raise ValueError(f"y_pos must be 1-d [B], got shape {tuple(y_pos.shape)}")
    _check_shape("y_neg", y_neg, tuple(y_pos.shape))
    diff = y_pos - y_neg
    return torch.where(diff > 0, torch.tanh(diff / tau), torch.zeros_like(diff))


def calibration_loss(
    z: Tensor,
    mask: Tensor,
    gamma: Tensor,
    w_pos: Tensor,
    w_neg: Tensor,
    stop_grad: bool = True,
    total: int | None = None,
    present: Tensor | None = None,
) -> Tensor:
    """Weight calibration loss (Eq. 8): mean_B gamma * KL(z || (w_pos + w_neg) / 2).

    ``present`` [B, M] bool (None: all): the modalities both items have; the pair mean is
    then taken over those and renormalised to a distribution there (z is zero elsewhere).

    z: [B, M] reliability, mask: [B] bool (False rows contribute 0 but still count
    in the mean's denominator), gamma: [B] confidence, w_pos/w_neg: [B, M] item
    weights (rows are distributions). With stop_grad, z and gamma are detached so
    the loss moves only the weights, as the paper's sg(.) says; without it (the
    "w/o nograd" variant) the gradient also reaches the ratings.
    KL uses 0 * log 0 = 0; entries with z = 0 give exactly zero gradient to q and z.
    ``total`` (default B) divides the sum, as in :func:`bpr_loss`.
    """
    if z.dim() != 2:
        raise ValueError(f"z must be 2-d [B, M], got shape {tuple(z.shape)}")
    b, m = z.shape
    _check_shape("mask", mask, (b,))
    _check_shape("gamma", gamma, (b,))
    _check_shape("w_pos", w_pos, (b, m))
    _check_shape("w_neg", w_neg, (b, m))
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if stop_grad:
        z = z.detach()
        gamma = gamma.detach()
    q = 0.5 * (w_pos + w_neg)
    if present is not None:
        _check_shape("present", present, (b, m))
        q = torch.where(present, q, torch.zeros_like(q))
        q = q / q.sum(dim=1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)
    positive = z > 0
    ones = torch.ones_like(z)
    # xlogy(0, y) has gradient 0 / y wrt y, which is NaN at y = 0; feeding 1 into
    # the log where z = 0 makes those entries constant, so their gradient is 0.
    z_log_z = torch.xlogy(z, torch.where(positive, z, ones))
    z_log_q = torch.xlogy(z, torch.where(positive, q, ones))
    kl = (z_log_z - z_log_q).sum(dim=1)
    per_row = torch.where(mask, gamma * kl, torch.zeros_like(kl))
    return per_row.sum() / max(b if total is None else total, 1)


def embedding_reg(tables: list[Tensor], weight: float, totals: list[int] | None = None) -> Tensor:
    """DRAGON's regulariser: weight * sum over tables of mean(t ** 2).

    tables: the batch users' preference embeddings, one [B, d] tensor per modality.
    ``totals`` (default each table's row count) are the global batch's row counts: each
    table's sum of squares is divided by total * d, so N workers' parts add up to the means.
    """
    if len(tables) == 0:
        raise ValueError("embedding_reg needs at least one table, got tables=[]")
    totals = [t.shape[0] for t in tables] if totals is None else totals
    if len(totals) != len(tables):
        raise ValueError(f"embedding_reg: {len(totals)} totals for {len(tables)} tables")
    out = None
    for t, rows in zip(tables, totals):
        term = t.pow(2).sum() / max(rows * math.prod(t.shape[1:]), 1)
        out = term if out is None else out + term
    return float(weight) * out
