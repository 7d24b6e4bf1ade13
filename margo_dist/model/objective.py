"""The per-stage training objective on a batch of triplets (docs/equations.md 3-7)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from margo_dist.config import ModelConfig
from margo_dist.model import losses
from margo_dist.model.margo import CALIBRATE, Recommender, fuse


@dataclass
class LossParts:
    """The loss to back-propagate and its detached parts for logging."""

    total: Tensor
    bpr: float
    cal: float
    reg: float
    calibrated: float  # fraction of triplets with a calibration term
    # the whole step's loss: ``total`` summed over the workers, the same on every worker (set by
    # the trainer's step, which reduces it with the dense gradients; nan until then)
    step_loss: float = math.nan


def ratings_loss(model: Recommender, stage: str, cfg: ModelConfig, r_pos: Tensor, r_neg: Tensor, users: Tensor,
                 pos: Tensor, neg: Tensor, global_batch: int | None = None,
                 regularised: tuple[Tensor, Tensor] | None = None, item_weights: Tensor | None = None) -> LossParts:
    """``L = L_rec + alpha * L_cal (calibration stage) + lambda * reg`` from the modality ratings
    ``r_pos``/``r_neg`` [B, M] (Eq. 2, ``Recommender.forward``) of triplets ``users``/``pos``/``neg``
    [B] (global ids, for the weight tables and the regulariser).

    ``global_batch`` (default B): the size of the whole step when these B triplets are one
    worker's share of it; every mean is then a sum over the share divided by it, so the
    workers' losses (and gradients) add up to the local step's. ``regularised``: the (users
    [R], positives then negatives [R']) whose rows the regulariser penalises, default these
    triplets'; a worker passes the whole step's rows that it owns, which add up over the
    workers to the step's and need no rows from another worker. ``item_weights``: the
    calibration stage's ``model.item_weights(cat([pos, neg]))`` [2B, M] when the caller has
    them (fetched while the step encoded).
    """
    b = users.numel()
    g = b if global_batch is None else global_batch
    # one lookup of θ's rows for positives and negatives, shared by fusion and L_cal
    items = torch.cat([pos, neg])
    w = None
    if stage == CALIBRATE:
        w = model.item_weights(items) if item_weights is None else item_weights
    cu, ci = model.fusion_coefficients(stage, users, items, w)
    ci_pos, ci_neg = (None, None) if ci is None else ci.split([b, b])
    y_pos = fuse(r_pos, cu, ci_pos)
    y_neg = fuse(r_neg, cu, ci_neg)
    bpr = losses.bpr_loss(y_pos, y_neg, g)
    total = bpr
    cal_value, calibrated = 0.0, 0.0
    if w is not None and model.spec.calibration and cfg.alpha > 0:  # w: the calibration stage
        w_pos, w_neg = w.split([b, b])
        cal, calibrated = calibration_term(model, cfg, r_pos, r_neg, y_pos, y_neg, w_pos, w_neg, g, pos, neg)
        total = total + cfg.alpha * cal
        cal_value = float(cal.detach())
    rows = model.regularised_rows(*(regularised or (users, torch.cat([pos, neg]))))
    reg = losses.embedding_reg([t for t, _ in rows], cfg.reg_weight, [per * g for _, per in rows])
    total = total + reg
    return LossParts(total=total, bpr=float(bpr.detach()), cal=cal_value, reg=float(reg.detach()),
                     calibrated=calibrated)


def calibration_term(model: Recommender, cfg: ModelConfig, r_pos: Tensor, r_neg: Tensor, y_pos: Tensor,
                     y_neg: Tensor, w_pos: Tensor, w_neg: Tensor, global_batch: int | None = None,
                     pos: Tensor | None = None, neg: Tensor | None = None) -> tuple[Tensor, float]:
    """``L_cal`` (Eq. 8) and the fraction of the (global) batch's triplets it supervises.

    r_pos/r_neg: [B, M] modality ratings; y_pos/y_neg: [B] fused scores; w_pos/w_neg:
    [B, M] the positive and negative items' weights ``softmax(θ_i)``; pos/neg: [B] their ids,
    whose missing modalities (``Recommender.present``) L_cal leaves out. The stop-gradient
    on z and gamma follows the variant (off for ``wo_nograd``).
    """
    both = model.present_pairs(pos, neg)
    z, mask = losses.reliability(r_pos, r_neg, both)
    gamma = losses.confidence(y_pos, y_neg, cfg.tau)
    cal = losses.calibration_loss(z, mask, gamma, w_pos, w_neg, stop_grad=model.spec.stop_gradient,
                                   total=global_batch, present=both)
    supervised = float(((gamma > 0) & mask).sum())
    return cal, supervised / max(gamma.numel() if global_batch is None else global_batch, 1)
