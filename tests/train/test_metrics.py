"""MMRec full-ranking metrics against hand-computed and brute-force values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from margo_dist.train.metrics import (
    weight_detection_auc,
    csr_from_pairs,
    full_ranking_eval,
    full_ranking_sums,
    rank_topk,
    ranking_metrics,
    ranking_sums,
)

L3 = 1 / math.log2(3)  # discount of rank 1 (0-based)
L5 = 1 / math.log2(5)  # discount of rank 3


def _hand_case() -> tuple[torch.Tensor, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """4 users x 6 items; user 2 has no held-out items."""
    scores = torch.tensor(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # ranks 0..5
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # ranks 5..0
            [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
        ]
    )
    train = csr_from_pairs(np.array([0, 1, 1, 2]), np.array([1, 5, 4, 0]), n_users=4)
    heldout = csr_from_pairs(
        np.array([0, 0, 1, 3, 3, 3]), np.array([2, 5, 3, 0, 2, 3]), n_users=4
    )
    return scores, train, heldout


def test_csr_from_pairs_groups_sorts_and_dedupes() -> None:
    indptr, indices = csr_from_pairs(
        np.array([2, 0, 2, 0, 2]), np.array([7, 3, 1, 3, 4]), n_users=4
    )
    # user 0: {3} (3 given twice), user 1: none, user 2: {1, 4, 7}, user 3: none
    assert indptr.tolist() == [0, 1, 1, 4, 4]
    assert indices.tolist() == [3, 1, 4, 7]
    with pytest.raises(ValueError, match="n_users=4"):
        csr_from_pairs(np.array([4]), np.array([0]), n_users=4)


def test_rank_topk_masks_train_items() -> None:
    scores, train, _ = _hand_case()
    rows = np.repeat(np.arange(4), np.diff(train[0]))
    top = rank_topk(scores, (torch.from_numpy(rows), torch.from_numpy(train[1])), k=4)
    # user 0: train {1} -> 0,2,3,4 ; user 1: train {4,5} -> 3,2,1,0
    # user 2: train {0} -> 1,2,3,4 ; user 3: nothing masked -> 0,1,2,3
    assert top.tolist() == [[0, 2, 3, 4], [3, 2, 1, 0], [1, 2, 3, 4], [0, 1, 2, 3]]
    unmasked = torch.topk(scores, 4, dim=1).indices
    assert unmasked[1].tolist() == [5, 4, 3, 2]
    # the input is not modified unless asked
    assert torch.isfinite(scores).all()


def test_hand_computed_recall_and_ndcg() -> None:
    scores, train, heldout = _hand_case()
    rows = np.repeat(np.arange(4), np.diff(train[0]))
    top = rank_topk(scores, (torch.from_numpy(rows), torch.from_numpy(train[1])), k=4)
    m = ranking_metrics(top, heldout, ks=[2, 4])
    # user 0: top [0,2,3,4], heldout {2,5}: hit at rank 1.
    #   R@2 = 1/2, R@4 = 1/2; DCG = L3; IDCG(min(K,2)=2) = 1 + L3.
    # user 1: top [3,2,1,0], heldout {3}: hit at rank 0. R = 1, NDCG = 1 at both K.
    # user 2: no held-out items -> excluded.
    # user 3: top [0,1,2,3], heldout {0,2,3}: hits at ranks 0, 2, 3.
    #   R@2 = 1/3, DCG@2 = 1, IDCG@2 = 1 + L3;
    #   R@4 = 3/3, DCG@4 = 1 + 1/2 + L5, IDCG@4 over min(4,3)=3 = 1 + L3 + 1/2.
    n0 = L3 / (1 + L3)
    expected = {
        "recall@2": (0.5 + 1.0 + 1 / 3) / 3,
        "recall@4": (0.5 + 1.0 + 1.0) / 3,
        "ndcg@2": (n0 + 1.0 + 1 / (1 + L3)) / 3,
        "ndcg@4": (n0 + 1.0 + (1 + 0.5 + L5) / (1 + L3 + 0.5)) / 3,
    }
    assert set(m) == set(expected)
    for name, value in expected.items():
        assert m[name] == pytest.approx(value, rel=1e-12), name


def test_masking_changes_metrics() -> None:
    scores, train, heldout = _hand_case()
    no_train = csr_from_pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), n_users=4)
    users = np.arange(4)
    masked = full_ranking_eval(lambda ids: scores[ids], users, train, heldout, ks=[2])
    unmasked = full_ranking_eval(lambda ids: scores[ids], users, no_train, heldout, ks=[2])
    # unmasked: user 0 top [0,1] -> 0 hits; user 1 top [5,4] -> 0; user 3 top [0,1] -> 1/3
    assert unmasked["recall@2"] == pytest.approx((0 + 0 + 1 / 3) / 3)
    assert masked["recall@2"] == pytest.approx((0.5 + 1.0 + 1 / 3) / 3)


def test_users_without_heldout_are_excluded() -> None:
    top = np.array([[0, 1], [1, 0], [0, 1]])
    heldout = [np.array([0]), np.array([], dtype=np.int64), np.array([5])]
    sums, n = ranking_sums(top, heldout, ks=[2])
    # user 0 hits (R=1), user 1 excluded, user 2 misses (R=0): mean over 2 users
    assert n == 2
    assert sums["recall@2"] == pytest.approx(1.0)
    m, per_user = ranking_metrics(top, heldout, ks=[2], per_user=True)
    assert m["recall@2"] == pytest.approx(0.5)
    assert per_user["recall@2"].tolist() == [1.0, 0.0, 0.0]
    # no counted users at all: zeros, not NaN
    empty = ranking_metrics(top, [np.zeros(0, np.int64)] * 3, ks=[1, 2])
    assert empty == {"recall@1": 0.0, "ndcg@1": 0.0, "recall@2": 0.0, "ndcg@2": 0.0}


def test_list_and_csr_heldout_agree() -> None:
    top = np.array([[3, 1, 2], [0, 4, 2]])
    as_list = [np.array([2, 9]), np.array([4])]
    as_csr = (np.array([0, 2, 3]), np.array([2, 9, 4]))
    assert ranking_metrics(top, as_list, ks=[1, 3]) == ranking_metrics(top, as_csr, ks=[1, 3])


def _random_problem(seed: int, n_users: int = 37, n_items: int = 23):
    rng = np.random.default_rng(seed)
    scores = torch.from_numpy(rng.standard_normal((n_users, n_items)).astype(np.float32))
    train_sets, held_sets = [], []
    for _ in range(n_users):
        perm = rng.permutation(n_items)
        n_tr = int(rng.integers(0, 8))
        n_he = int(rng.integers(0, 6))
        train_sets.append(set(perm[:n_tr].tolist()))
        held_sets.append(set(perm[n_tr : n_tr + n_he].tolist()))
    return scores, train_sets, held_sets


def _to_csr(sets: list[set[int]]) -> tuple[np.ndarray, np.ndarray]:
    u = np.array([i for i, s in enumerate(sets) for _ in s], dtype=np.int64)
    it = np.array([x for s in sets for x in s], dtype=np.int64)
    return csr_from_pairs(u, it, n_users=len(sets))


def _brute_force(scores, train_sets, held_sets, users, ks):
    """Plain-Python MMRec metrics, independent of the vectorised code."""
    totals = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    counted = 0
    for u in users:
        held = held_sets[u]
        if not held:
            continue
        counted += 1
        row = scores[u].tolist()
        ranked = sorted(
            (i for i in range(len(row)) if i not in train_sets[u]), key=lambda i: -row[i]
        )
        for k in ks:
            top = ranked[:k]
            hits = [1 if i in held else 0 for i in top]
            totals[f"recall@{k}"] += sum(hits) / len(held)
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(held))))
            totals[f"ndcg@{k}"] += dcg / idcg
    return {name: v / counted for name, v in totals.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_ranking_matches_brute_force(seed: int) -> None:
    scores, train_sets, held_sets = _random_problem(seed)
    users = np.arange(len(train_sets))
    ks = [1, 5, 10]
    got = full_ranking_eval(
        lambda ids: scores[ids], users, _to_csr(train_sets), _to_csr(held_sets), ks, user_chunk=8
    )
    want = _brute_force(scores, train_sets, held_sets, users, ks)
    assert set(got) == set(want)
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-9, abs=1e-12), name


def test_chunked_equals_single_chunk_and_worker_sums_add_up() -> None:
    scores, train_sets, held_sets = _random_problem(7, n_users=50, n_items=30)
    train, held = _to_csr(train_sets), _to_csr(held_sets)
    users = np.random.default_rng(3).permutation(50)[:41]
    ks = [3, 10]
    fn = lambda ids: scores[ids]  # noqa: E731
    whole = full_ranking_eval(fn, users, train, held, ks, user_chunk=10_000)
    for chunk in (1, 4, 13):
        part = full_ranking_eval(fn, users, train, held, ks, user_chunk=chunk)
        for name in whole:
            assert part[name] == pytest.approx(whole[name], rel=1e-12), (chunk, name)
    # two "workers" with disjoint users: add sums and counts, then divide once
    s1, n1 = full_ranking_sums(fn, users[:17], train, held, ks)
    s2, n2 = full_ranking_sums(fn, users[17:], train, held, ks)
    assert n1 + n2 == sum(1 for u in users if held_sets[u])
    for name in whole:
        assert (s1[name] + s2[name]) / (n1 + n2) == pytest.approx(whole[name], rel=1e-12)
    want = _brute_force(scores, train_sets, held_sets, users, ks)
    for name in want:
        assert whole[name] == pytest.approx(want[name], rel=1e-9)


def test_score_fn_output_is_not_overwritten() -> None:
    scores, train, heldout = _hand_case()
    cache = scores.clone()
    full_ranking_eval(lambda ids: cache[int(ids[0]) : int(ids[-1]) + 1], np.arange(4), train, heldout, ks=[2])
    assert torch.equal(cache, scores)


def test_bad_inputs_are_rejected() -> None:
    scores, train, heldout = _hand_case()
    with pytest.raises(ValueError, match="k=7"):
        rank_topk(scores, (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)), k=7)
    with pytest.raises(ValueError, match="ks"):
        ranking_metrics(np.zeros((2, 3), np.int64), [np.array([1]), np.array([2])], ks=[])
    with pytest.raises(ValueError, match="max\\(ks\\)=5"):
        ranking_metrics(np.zeros((2, 3), np.int64), [np.array([1]), np.array([2])], ks=[5])
    with pytest.raises(ValueError, match="eval_users"):
        full_ranking_eval(lambda ids: scores[ids], np.array([0, 4]), train, heldout, ks=[2])


def test_weight_detection_auc_hand_values():
    w = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    bad = torch.tensor([[False, True], [True, False], [False, False]])
    # noisy weights 0.1, 0.2; clean 0.9, 0.8, 0.6, 0.4: every noisy pair is lower -> AUC 1
    assert weight_detection_auc(w, bad) == pytest.approx(1.0)
    bad2 = torch.tensor([[True, False], [False, False], [False, False]])
    # noisy 0.9 is above all five clean weights -> 0
    assert weight_detection_auc(w, bad2) == pytest.approx(0.0)
    tie = torch.tensor([[0.5, 0.5]])
    assert weight_detection_auc(tie, torch.tensor([[True, False]])) == pytest.approx(0.5)
