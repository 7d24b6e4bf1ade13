"""Full-ranking Recall@K and NDCG@K as in MMRec (docs/equations.md section 9).

Every item is ranked for every evaluated user, the user's training items are
masked, and the top max(K) list is compared with the user's held-out items.
Sums and user counts are exposed separately so that workers holding different
users can add them up before dividing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from margo_dist.data.dataset import pair_codes

__all__ = [
    "csr_from_pairs",
    "rank_topk",
    "per_user_metrics",
    "ranking_sums",
    "ranking_metrics",
    "full_ranking_sums",
    "full_ranking_eval",
]

Csr = tuple[np.ndarray, np.ndarray]


def csr_from_pairs(users: np.ndarray, items: np.ndarray, n_users: int) -> Csr:
    """Group (user, item) pairs into CSR (indptr [n_users + 1], indices) by user.

    Items of a row are sorted and deduplicated: a repeated interaction must not
    count twice in a Recall denominator.
    """
    users = np.asarray(users)
    items = np.asarray(items)
    if users.shape != items.shape or users.ndim != 1:
        raise ValueError(
            f"users and items must be 1-d of equal length, got shapes {users.shape} and {items.shape}"
        )
    n_users = int(n_users)
    if n_users < 0:
        raise ValueError(f"n_users must be >= 0, got n_users={n_users}")
    users = users.astype(np.int64, copy=False)
    items = items.astype(np.int64, copy=False)
    if users.size:
        bad = np.flatnonzero((users < 0) | (users >= n_users))
        if bad.size:
            raise ValueError(
                f"users[{bad[0]}]={users[bad[0]]} is outside [0, n_users={n_users})"
            )
        bad = np.flatnonzero(items < 0)
        if bad.size:
            raise ValueError(f"items[{bad[0]}]={items[bad[0]]} is negative")
    order = np.lexsort((items, users))
    users = users[order]
    items = items[order]
    if users.size:
        keep = np.ones(users.size, dtype=bool)
        keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
        users = users[keep]
        items = items[keep]
    counts = np.bincount(users, minlength=n_users)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, items


def train_mask(train_csr: Csr, users: np.ndarray) -> tuple[Tensor, Tensor]:
    """(row, col) of the training items of ``users``, rows numbered within ``users``."""
    ptr, items = _csr_rows(train_csr, users)
    rows = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(ptr))
    return torch.from_numpy(rows), torch.from_numpy(items)


def _csr_rows(csr: Csr, rows: np.ndarray) -> Csr:
    """The sub-CSR of the given rows, in that order (vectorised gather)."""
    indptr, indices = csr
    rows = np.asarray(rows, dtype=np.int64)
    starts = indptr[rows]
    counts = indptr[rows + 1] - starts
    sub_ptr = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(counts, out=sub_ptr[1:])
    total = int(sub_ptr[-1])
    pos = np.arange(total, dtype=np.int64) - np.repeat(sub_ptr[:-1], counts) + np.repeat(starts, counts)
    return sub_ptr, np.asarray(indices, dtype=np.int64)[pos]


def _as_csr(heldout: Csr | Sequence[np.ndarray], n_rows: int) -> Csr:
    """Accept CSR as a tuple (indptr, indices), or a list of per-user item arrays."""
    if isinstance(heldout, tuple):
        if len(heldout) != 2:
            raise ValueError(f"heldout CSR must be (indptr, indices), got a tuple of {len(heldout)}")
        indptr = np.asarray(heldout[0], dtype=np.int64)
        indices = np.asarray(heldout[1], dtype=np.int64)
        if indptr.ndim != 1 or indptr.size != n_rows + 1:
            raise ValueError(
                f"heldout indptr has shape {indptr.shape}, expected ({n_rows + 1},) for {n_rows} users"
            )
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.size:
            raise ValueError(
                f"heldout CSR is malformed: indptr[0]={indptr[0]}, indptr[-1]={indptr[-1]}, "
                f"{indices.size} indices"
            )
        return indptr, indices
    rows = list(heldout)
    if len(rows) != n_rows:
        raise ValueError(f"heldout has {len(rows)} rows but topk_items has {n_rows}")
    counts = np.array([np.asarray(r).size for r in rows], dtype=np.int64)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = (
        np.concatenate([np.asarray(r, dtype=np.int64).ravel() for r in rows])
        if n_rows
        else np.zeros(0, dtype=np.int64)
    )
    return indptr, indices


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or any(k <= 0 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive integers, got ks={ks}")
    return ks


def rank_topk(
    scores: Tensor,
    train_mask_indices: tuple[Tensor, Tensor],
    k: int,
    inplace: bool = False,
) -> Tensor:
    """Top-k item ids [U, k] per row, best first, after masking train items with -inf.

    scores: [U, I]; train_mask_indices: (row, col) index tensors of the entries to
    mask (rows index into scores). inplace lets the caller reuse a scratch score
    matrix instead of copying it.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-d [U, I], got shape {tuple(scores.shape)}")
    n_items = scores.shape[1]
    k = int(k)
    if k <= 0 or k > n_items:
        raise ValueError(f"k={k} must be in [1, n_items={n_items}]")
    rows, cols = train_mask_indices
    rows = torch.as_tensor(rows, dtype=torch.long, device=scores.device)
    cols = torch.as_tensor(cols, dtype=torch.long, device=scores.device)
    if rows.shape != cols.shape:
        raise ValueError(
            f"train_mask_indices row/col shapes differ: {tuple(rows.shape)} vs {tuple(cols.shape)}"
        )
    if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= n_items):
        raise ValueError(
            f"train_mask_indices has item ids in [{int(cols.min())}, {int(cols.max())}], "
            f"outside [0, n_items={n_items})"
        )
    masked = scores if inplace else scores.clone()
    if rows.numel():
        masked[rows, cols] = float("-inf")
    return torch.topk(masked, k, dim=1, largest=True, sorted=True).indices


def per_user_metrics(
    topk_items: np.ndarray | Tensor,
    heldout: Csr | Sequence[np.ndarray],
    ks: Sequence[int],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-user recall@K and ndcg@K arrays [U] and the bool [U] of users that count.

    topk_items: [U, Kmax] ranked item ids; heldout: each row's held-out items, as a
    tuple (indptr [U + 1], indices) or a list of U arrays (assumed free of duplicates).
    Users without held-out items get 0 in every array and False in the mask.
    """
    ks = _check_ks(ks)
    if isinstance(topk_items, Tensor):
        topk_items = topk_items.detach().cpu().numpy()
    topk = np.asarray(topk_items, dtype=np.int64)
    if topk.ndim != 2:
        raise ValueError(f"topk_items must be 2-d [U, Kmax], got shape {topk.shape}")
    n_users, k_max = topk.shape
    if max(ks) > k_max:
        raise ValueError(f"max(ks)={max(ks)} exceeds the {k_max} ranked items per user")
    indptr, indices = _as_csr(heldout, n_users)
    n_pos = np.diff(indptr)
    valid = n_pos > 0

    # A hit is a (row, item) pair present in both lists: compare row-tagged codes.
    width = int(max(topk.max(initial=-1), indices.max(initial=-1))) + 1
    row_of_pos = np.repeat(np.arange(n_users, dtype=np.int64), n_pos)
    pos_codes = pair_codes(row_of_pos, indices, width)
    top_codes = pair_codes(np.arange(n_users, dtype=np.int64)[:, None], topk, width)
    hits = np.isin(top_codes, pos_codes).astype(np.float64)

    discount = 1.0 / np.log2(np.arange(k_max, dtype=np.float64) + 2.0)
    dcg_cum = np.cumsum(hits * discount, axis=1)
    hit_cum = np.cumsum(hits, axis=1)
    ideal_cum = np.cumsum(discount)
    denom = np.where(valid, n_pos, 1).astype(np.float64)

    out: dict[str, np.ndarray] = {}
    for k in ks:
        recall = hit_cum[:, k - 1] / denom
        n_ideal = np.minimum(n_pos, k)
        idcg = np.where(valid, ideal_cum[np.maximum(n_ideal, 1) - 1], 1.0)
        ndcg = dcg_cum[:, k - 1] / idcg
        out[f"recall@{k}"] = np.where(valid, recall, 0.0)
        out[f"ndcg@{k}"] = np.where(valid, ndcg, 0.0)
    return out, valid


def ranking_sums(
    topk_items: np.ndarray | Tensor,
    heldout: Csr | Sequence[np.ndarray],
    ks: Sequence[int],
) -> tuple[dict[str, float], int]:
    """Sums of each metric over counted users, and how many users counted.

    Workers add both across themselves and divide once, which gives the same mean
    as evaluating all users in one place.
    """
    per_user, valid = per_user_metrics(topk_items, heldout, ks)
    sums = {name: float(values[valid].sum()) for name, values in per_user.items()}
    return sums, int(valid.sum())


def _means(sums: dict[str, float], n_users: int) -> dict[str, float]:
    if n_users == 0:
        return {name: 0.0 for name in sums}
    return {name: value / n_users for name, value in sums.items()}


def ranking_metrics(
    topk_items: np.ndarray | Tensor,
    heldout: Csr | Sequence[np.ndarray],
    ks: Sequence[int],
    per_user: bool = False,
) -> dict[str, float] | tuple[dict[str, float], dict[str, np.ndarray]]:
    """Mean recall@K / ndcg@K over users with held-out items (0.0 when there are none).

    With per_user, also returns the per-user arrays (0 for users that do not count).
    """
    if per_user:
        arrays, valid = per_user_metrics(topk_items, heldout, ks)
        sums = {name: float(values[valid].sum()) for name, values in arrays.items()}
        return _means(sums, int(valid.sum())), arrays
    sums, n = ranking_sums(topk_items, heldout, ks)
    return _means(sums, n)


def full_ranking_sums(
    score_fn: Callable[[Tensor], Tensor],
    eval_users: np.ndarray,
    train_csr: Csr,
    heldout_csr: Csr,
    ks: Sequence[int],
    user_chunk: int = 4096,
    fresh_scores: bool = False,
) -> tuple[dict[str, float], int]:
    """Metric sums and counted users for eval_users, scoring user_chunk users at a time.

    score_fn maps a LongTensor of user ids [n] to scores [n, n_items]. train_csr and
    heldout_csr are indexed by global user id. Memory is bounded by one chunk's
    score matrix, plus its masked copy unless ``fresh_scores`` says score_fn returns
    a new tensor each call (then it is masked in place instead of copied).
    """
    ks = _check_ks(ks)
    user_chunk = int(user_chunk)
    if user_chunk <= 0:
        raise ValueError(f"user_chunk must be > 0, got user_chunk={user_chunk}")
    eval_users = np.asarray(eval_users, dtype=np.int64).ravel()
    n_all = np.asarray(train_csr[0]).size - 1
    if np.asarray(heldout_csr[0]).size - 1 != n_all:
        raise ValueError(
            f"train_csr covers {n_all} users but heldout_csr covers "
            f"{np.asarray(heldout_csr[0]).size - 1}"
        )
    if eval_users.size and (eval_users.min() < 0 or eval_users.max() >= n_all):
        raise ValueError(
            f"eval_users holds ids in [{eval_users.min()}, {eval_users.max()}], "
            f"outside [0, {n_all}) covered by train_csr"
        )
    k_max = max(ks)
    totals = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    counted = 0
    with torch.no_grad():
        for start in range(0, eval_users.size, user_chunk):
            ids = eval_users[start : start + user_chunk]
            scores = score_fn(torch.from_numpy(ids))
            if scores.dim() != 2 or scores.shape[0] != ids.size:
                raise ValueError(
                    f"score_fn returned shape {tuple(scores.shape)} for {ids.size} users, "
                    f"expected [{ids.size}, n_items]"
                )
            top = rank_topk(scores, train_mask(train_csr, ids), k_max, inplace=fresh_scores)
            sums, n = ranking_sums(top, _csr_rows(heldout_csr, ids), ks)
            for name, value in sums.items():
                totals[name] += value
            counted += n
    return totals, counted


def full_ranking_eval(
    score_fn: Callable[[Tensor], Tensor],
    eval_users: np.ndarray,
    train_csr: Csr,
    heldout_csr: Csr,
    ks: Sequence[int],
    user_chunk: int = 4096,
    fresh_scores: bool = False,
) -> dict[str, float]:
    """MMRec full-ranking recall@K / ndcg@K means over eval_users with held-out items."""
    sums, n = full_ranking_sums(score_fn, eval_users, train_csr, heldout_csr, ks, user_chunk, fresh_scores)
    return _means(sums, n)


@torch.no_grad()
def weight_detection_auc(weights: Tensor, unreliable: Tensor, present: Tensor | None = None) -> float:
    """ROC AUC of ``-weight`` as a detector of unreliable (item, modality) pairs.

    weights, unreliable: [n_items, M]. 1.0 means every noisy pair has a lower weight
    than every clean pair; 0.5 is chance. Ties count one half. ``present`` [n_items, M]
    bool: only those pairs are scored (a missing pair's weight is 0 by construction).
    """
    score = -weights.flatten().double()
    label = unreliable.flatten().bool()
    if present is not None:
        keep = present.flatten().bool()
        score, label = score[keep], label[keep]
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both unreliable and reliable pairs")
    order = torch.argsort(score)
    sorted_score = score[order]
    ranks = torch.empty_like(score)
    # average ranks over ties
    _, inverse, counts = torch.unique_consecutive(sorted_score, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    rank_sum = ranks[label].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
