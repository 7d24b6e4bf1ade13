"""Offline graph artefacts: kNN, co-occurrence, cache key, storage, ensure_graphs."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import uuid

import numpy as np
import pytest

from margo_dist.config import GraphConfig
from margo_dist.data import io as mio
from margo_dist.data.dataset import Dataset
from margo_dist.errors import DataError
from margo_dist.graph.build import (GraphArtifacts, build_graphs, dedup_pairs, ensure_graphs, fill_ranked,
                                    graph_key, graphs_dir, item_knn, load_graphs, padded_edges, save_graphs,
                                    user_cooccurrence)

A = 1.0 / math.sqrt(2.0)

# Rows chosen so every cosine is exact in float32 and ties are exact:
# 0 and 1 point the same way, 3 is between 0 and 2, 4 is zero, 5 is opposite 0.
TINY = np.array([[1, 0, 0], [2, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0], [-1, 0, 0]], dtype=np.float32)
# Hand-computed top-3 (itself excluded; ties by lower id; zero row similar 0 to all).
TINY_IDX = [[1, 3, 2], [0, 3, 2], [3, 0, 1], [0, 1, 2], [0, 1, 2], [2, 4, 3]]
TINY_SIM = [[1, A, 0], [1, A, 0], [A, 0, 0], [A, A, A], [0, 0, 0], [0, 0, -A]]


def brute_knn(feat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full n x n cosine matrix in float64, sorted per row by (-sim, id)."""
    x = feat.astype(np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    sim = x @ x.T
    n = len(x)
    idx = np.array([[j for j in sorted(range(n), key=lambda j: (-round(sim[r, j], 9), j)) if j != r][:k]
                    for r in range(n)], dtype=np.int64).reshape(n, min(k, n - 1))
    return idx, np.take_along_axis(sim, idx, axis=1)


def test_item_knn_hand_checked_tiny() -> None:
    idx, sim = item_knn(TINY, 3)
    assert idx.dtype == np.int64 and sim.dtype == np.float32
    np.testing.assert_array_equal(idx, TINY_IDX)
    np.testing.assert_allclose(sim, TINY_SIM, atol=1e-7)
    assert not np.isnan(sim).any()
    for r in range(len(TINY)):
        assert r not in idx[r]


def test_item_knn_matches_brute_force() -> None:
    bidx, bsim = brute_knn(TINY, 3)
    np.testing.assert_array_equal(bidx, TINY_IDX)
    rng = np.random.default_rng(3)
    feat = rng.standard_normal((60, 8)).astype(np.float32)
    feat[17] = 0.0
    bidx, bsim = brute_knn(feat, 5)
    idx, sim = item_knn(feat, 5, chunk_rows=7)
    np.testing.assert_array_equal(idx, bidx)
    np.testing.assert_allclose(sim, bsim, atol=1e-6)


@pytest.mark.parametrize("chunk_rows,col_chunk", [(1, 16384), (2, 16384), (4, 1), (5, 2), (6, 4), (3, 5)])
def test_item_knn_blocks_equal_one_block(chunk_rows: int, col_chunk: int) -> None:
    ref_idx, ref_sim = item_knn(TINY, 3, chunk_rows=len(TINY))
    idx, sim = item_knn(TINY, 3, chunk_rows=chunk_rows, col_chunk=col_chunk)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(sim, ref_sim)
    feat = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    ref_idx, ref_sim = item_knn(feat, 4, chunk_rows=50)
    idx, sim = item_knn(feat, 4, chunk_rows=chunk_rows, col_chunk=col_chunk)
    np.testing.assert_array_equal(idx, ref_idx)
    # Different shapes may pick different BLAS kernels: equal up to the last bit.
    np.testing.assert_allclose(sim, ref_sim, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk_rows,col_chunk", [(300, 16384), (64, 50)])
def test_item_knn_in_bf16_with_a_float32_rerank_equals_float32(chunk_rows: int, col_chunk: int) -> None:
    rng = np.random.default_rng(5)
    feat = (rng.standard_normal((300, 8)) @ rng.standard_normal((8, 48))).astype(np.float32)  # near neighbours
    feat[7] = 0.0
    ref_idx, ref_sim = item_knn(feat, 6, chunk_rows=chunk_rows, col_chunk=col_chunk)
    stats: dict[str, int] = {}
    idx, sim = item_knn(feat, 6, chunk_rows=chunk_rows, col_chunk=col_chunk, precision="bfloat16", stats=stats)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sim, ref_sim, rtol=0, atol=1e-6)
    assert 0 <= stats["rows_recomputed"] < 300


def test_item_knn_in_bf16_recomputes_the_rows_whose_margin_ran_out() -> None:
    rng = np.random.default_rng(6)
    feat = rng.standard_normal((80, 16)).astype(np.float32)
    ref_idx, ref_sim = item_knn(feat, 4)
    stats: dict[str, int] = {}
    # no margin: the last candidate is always in the top k, so every row is recomputed exactly
    idx, sim = item_knn(feat, 4, precision="bfloat16", margin=0, stats=stats)
    assert stats["rows_recomputed"] == 80
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sim, ref_sim, rtol=0, atol=1e-6)
    with pytest.raises(DataError, match="precision 'half' is not float32 or bfloat16"):
        item_knn(feat, 4, precision="half")


def test_item_knn_small_catalogue_and_bad_input() -> None:
    idx, sim = item_knn(TINY[:3], 10)
    np.testing.assert_array_equal(idx, [[1, 2], [0, 2], [0, 1]])
    np.testing.assert_allclose(sim, [[1, 0], [1, 0], [0, 0]], atol=1e-7)
    idx, sim = item_knn(TINY[:1], 10)
    assert idx.shape == (1, 0) and sim.shape == (1, 0)
    bad = TINY.copy()
    bad[4, 2] = np.nan
    with pytest.raises(DataError, match="row 4"):
        item_knn(bad, 2, name="image")


# Users' items; (0, 0) appears twice and must count once.
CO_USER = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 4])
CO_ITEM = np.array([0, 1, 2, 0, 0, 1, 2, 3, 0, 1, 2, 3, 4])
# Shared items: 0-1:2, 0-2:1, 0-3:3, 1-3:2, 2-3:2, user 4 shares nothing.
CO_NBR = [[3, 1, 2], [0, 3, -1], [3, 0, -1], [0, 1, 2], [-1, -1, -1]]
CO_CNT = [[3, 2, 1], [2, 2, 0], [2, 1, 0], [3, 2, 2], [0, 0, 0]]


@pytest.mark.parametrize("chunk_rows", [1, 2, 4096])
def test_user_cooccurrence_hand_checked(chunk_rows: int) -> None:
    nbr, cnt = user_cooccurrence(CO_USER, CO_ITEM, 5, 5, 3, chunk_rows)
    assert nbr.dtype == np.int64 and cnt.dtype == np.float32
    np.testing.assert_array_equal(nbr, CO_NBR)
    np.testing.assert_array_equal(cnt, CO_CNT)
    nbr, cnt = user_cooccurrence(CO_USER, CO_ITEM, 5, 5, 1, chunk_rows)
    np.testing.assert_array_equal(nbr[:, 0], [3, 0, 3, 0, -1])
    np.testing.assert_array_equal(cnt[:, 0], [3, 2, 2, 3, 0])


def test_user_cooccurrence_matches_dense_brute_force() -> None:
    rng = np.random.default_rng(5)
    nu, ni, k = 25, 12, 6
    u, i = rng.integers(0, nu, 90), rng.integers(0, ni, 90)
    r = np.zeros((nu, ni), np.int64)
    r[u, i] = 1
    co = r @ r.T
    np.fill_diagonal(co, 0)
    nbr, cnt = user_cooccurrence(u, i, nu, ni, k, chunk_rows=4)
    for a in range(nu):
        want = [b for b in sorted(range(nu), key=lambda b: (-co[a, b], b)) if co[a, b] > 0][:k]
        assert nbr[a, :len(want)].tolist() == want
        assert cnt[a, :len(want)].tolist() == co[a, want].tolist()
        assert (nbr[a, len(want):] == -1).all() and (cnt[a, len(want):] == 0).all()


def test_user_cooccurrence_rejects_out_of_range_id() -> None:
    with pytest.raises(DataError, match="row 2 field item=9"):
        user_cooccurrence(np.array([0, 1, 1]), np.array([0, 1, 9]), 2, 5, 2)



def test_dedup_pairs_sorts_and_names_the_bad_entry() -> None:
    u, i = dedup_pairs(np.array([2, 0, 2, 0]), np.array([1, 3, 1, 0]), 3, 4, "here")
    assert u.tolist() == [0, 0, 2] and i.tolist() == [0, 3, 1]
    with pytest.raises(DataError, match=r"here: row 7 field item=4 is outside \[0, 4\)"):
        dedup_pairs(np.array([0, 1]), np.array([1, 4]), 3, 4, "here", row_ids=np.array([3, 7]))
    with pytest.raises(DataError, match=r"here: b\[0\]=-1 is outside"):
        dedup_pairs(np.array([0]), np.array([-1]), 3, 4, "here", names=("a", "b"), cell="{field}[{row}]")


@pytest.mark.parametrize("dtype", [np.int64, np.float32])
def test_fill_ranked_orders_by_value_then_column_and_truncates(dtype) -> None:
    rows = np.array([0, 0, 0, 2, 0, 2])
    cols = np.array([4, 1, 3, 0, 2, 5])
    vals = np.array([1, 2, 2, 7, 5, 7], dtype=dtype)
    idx, out = np.full((3, 3), -1, np.int64), np.zeros((3, 3), np.float32)
    fill_ranked(rows, cols, vals, idx, out)
    assert idx.tolist() == [[2, 1, 3], [-1, -1, -1], [0, 5, -1]]
    assert out.tolist() == [[5, 2, 2], [0, 0, 0], [7, 7, 0]]


def test_padded_edges() -> None:
    src, dst, valid = padded_edges(np.array([[3, -1, 1], [-1, -1, -1], [0, 2, -1]]))
    assert src.tolist() == [3, 1, 0, 2] and dst.tolist() == [0, 0, 2, 2]
    assert src.dtype == dst.dtype == np.int64 and valid.sum() == 4


def test_build_does_not_import_partition() -> None:
    code = "import sys, margo_dist.graph.build; assert 'margo_dist.graph.partition' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _dataset() -> Dataset:
    rng = np.random.default_rng(0)
    user = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 3])
    item = np.array([0, 1, 1, 1, 2, 2, 3, 0, 3, 4, 4, 5])
    label = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 1], dtype=np.int8)
    features = {"image": rng.standard_normal((6, 4)).astype(np.float32),
                "text": rng.standard_normal((6, 3)).astype(np.float32)}
    return Dataset(name="tiny", n_users=4, n_items=6, user=user, item=item, label=label, features=features)


def test_build_graphs_uses_deduplicated_train_split() -> None:
    ds = _dataset()
    cfg = GraphConfig(item_k=2, user_k=3)
    g = build_graphs(ds, cfg)
    # Train pairs: (0,0) (0,1) [twice] (1,1) (1,2) (2,2) (2,3) (3,0) (3,3); valid/test rows left out.
    assert g.train_user.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert g.train_item.tolist() == [0, 1, 1, 2, 2, 3, 0, 3]
    assert g.train_user.dtype == np.int64 and g.user_degree.dtype == np.float32
    assert g.user_degree.tolist() == [2, 2, 2, 2]
    assert g.item_degree.tolist() == [2, 2, 2, 2, 0, 0]
    # Co-users: 0-1 share item 1, 0-3 item 0, 1-2 item 2, 2-3 item 3.
    assert g.user_nbr.tolist() == [[1, 3, -1], [0, 2, -1], [1, 3, -1], [0, 2, -1]]
    assert g.user_cnt.tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0]]
    assert g.modalities == ["image", "text"]
    for m in ("image", "text"):
        bidx, bsim = brute_knn(ds.features[m], 2)
        np.testing.assert_array_equal(g.item_knn[m][0], bidx)
        np.testing.assert_allclose(g.item_knn[m][1], bsim, atol=1e-6)
    assert g.key == graph_key(ds, cfg, ["image", "text"])
    only_text = build_graphs(ds, cfg, ["text"])
    assert only_text.modalities == ["text"]
    with pytest.raises(DataError, match="'audio'"):
        build_graphs(ds, cfg, ["audio"])


def test_graph_key_tracks_parameters_and_data() -> None:
    ds = _dataset()
    cfg = GraphConfig(item_k=2, user_k=3)
    key = graph_key(ds, cfg, ["image", "text"])
    assert len(key) == 16 and int(key, 16) >= 0
    assert graph_key(ds, dataclasses.replace(cfg, chunk_rows=7), ["image", "text"]) == key
    assert graph_key(ds, dataclasses.replace(cfg, cache_dir="/elsewhere"), ["image", "text"]) == key
    assert graph_key(ds, cfg, ["text", "image"]) == key
    assert graph_key(ds, dataclasses.replace(cfg, knn_precision="float32"), ["image", "text"]) == key
    others = {graph_key(ds, dataclasses.replace(cfg, item_k=3), ["image", "text"]),
              graph_key(ds, dataclasses.replace(cfg, user_k=4), ["image", "text"]),
              graph_key(ds, cfg, ["text"]),
              graph_key(ds, dataclasses.replace(cfg, knn_precision="bfloat16"), ["image", "text"])}
    changed_feat = _dataset()
    changed_feat.features["image"][5, 0] += 1.0
    changed_inter = _dataset()
    changed_inter.item[3] = 2
    others |= {graph_key(changed_feat, cfg, ["image", "text"]), graph_key(changed_inter, cfg, ["image", "text"])}
    assert key not in others and len(others) == 6


def _assert_same(a: GraphArtifacts, b: GraphArtifacts) -> None:
    assert (a.n_users, a.n_items, a.key, a.modalities) == (b.n_users, b.n_items, b.key, b.modalities)
    for name in ("train_user", "train_item", "user_degree", "item_degree", "user_nbr", "user_cnt"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    for m in a.modalities:
        for x, y in zip(a.item_knn[m], b.item_knn[m]):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_save_load_round_trip(tmp_path, where: str) -> None:
    base = str(tmp_path) if where == "local" else f"memory://graphs-{uuid.uuid4().hex}"
    url = mio.join(base, "cache", "graphs-x")
    g = build_graphs(_dataset(), GraphConfig(item_k=2, user_k=3))
    try:
        save_graphs(g, url)
        _assert_same(load_graphs(url), g)
        # No temporary folder is left beside the result.
        assert mio.listdir(mio.join(base, "cache")) == ["graphs-x"]
        # Saving different content to the same place replaces it.
        other = dataclasses.replace(g, key="other", user_nbr=g.user_nbr[:, :2].copy(),
                                    user_cnt=g.user_cnt[:, :2].copy())
        save_graphs(other, url)
        _assert_same(load_graphs(url), other)
        assert mio.listdir(mio.join(base, "cache")) == ["graphs-x"]
    finally:
        if where == "memory":
            mio.remove(base)


def test_load_rejects_missing_or_inconsistent_files(tmp_path) -> None:
    url = str(tmp_path / "g")
    with pytest.raises(DataError, match="manifest"):
        load_graphs(url)
    g = build_graphs(_dataset(), GraphConfig(item_k=2, user_k=3))
    save_graphs(g, url)
    np.save(tmp_path / "g" / "user_degree.npy", np.zeros(3, np.float32))
    with pytest.raises(DataError, match="user_degree.npy"):
        load_graphs(url)


def test_graphs_dir() -> None:
    assert graphs_dir("/data/baby", GraphConfig(), "abc") == "/data/baby/.margo_cache/graphs-abc"
    assert graphs_dir("memory://d", GraphConfig(), "abc") == "memory://d/.margo_cache/graphs-abc"
    assert graphs_dir("/data/baby", GraphConfig(cache_dir="/c"), "abc") == "/c/graphs-abc"


def test_ensure_graphs_builds_once_then_loads(tmp_path, monkeypatch) -> None:
    ds = _dataset()
    ds_url = str(tmp_path / "ds")
    cfg = GraphConfig(item_k=2, user_k=3)
    with pytest.raises(DataError, match="margo-dist data graphs"):
        ensure_graphs(ds, ds_url, cfg, None, build=False)
    built = ensure_graphs(ds, ds_url, cfg, None, build=True)
    folder = graphs_dir(ds_url, cfg, graph_key(ds, cfg, ["image", "text"]))
    assert mio.exists(mio.join(folder, "manifest.json"))

    def no_build(*args, **kwargs):
        raise AssertionError("ensure_graphs rebuilt a cached graph")

    monkeypatch.setattr("margo_dist.graph.build.build_graphs", no_build)
    _assert_same(ensure_graphs(ds, ds_url, cfg, None, build=False), built)
    # Another parameter is another key: not cached, so build=False refuses.
    with pytest.raises(DataError, match="not at"):
        ensure_graphs(ds, ds_url, dataclasses.replace(cfg, user_k=2), None, build=False)
