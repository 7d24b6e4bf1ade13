"""Sampled blocks: exact parity with the full graph at fan-out -1, and sane finite fan-outs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from margo_dist.config import GraphConfig, ModelConfig
from margo_dist.data.synth import make_synthetic
from margo_dist.errors import ConfigError
from margo_dist.graph.build import build_graphs
from margo_dist.graph.sample import BlockSampler, OneBuffer, check_fanouts, sampled_batches
from margo_dist.graph.tensors import full_graph
from margo_dist.model.margo import PRETRAIN, build_model, fuse, modality_ratings

ALL = {"ui": [-1, -1], "iu": [-1, -1], "ii": [-1], "uu": [-1]}


@pytest.fixture(scope="module")
def small():
    ds, _ = make_synthetic(60, 40, 500, {"image": 10, "text": 6}, seed=2)
    art = build_graphs(ds, GraphConfig(item_k=4, user_k=6), ["image", "text"])
    full = full_graph(art, ["image", "text"], {})
    feats = [torch.from_numpy(ds.features[m]) for m in ("image", "text")]
    return ds, full, feats


@pytest.mark.parametrize("variant", ["margo", "dragon", "lightgcn", "bpr_mf", "wo_two_stage"])
def test_full_fanout_matches_full_graph(small, variant):
    ds, full, feats = small
    cfg = ModelConfig(dim=8, variant=variant)
    model = build_model(ds.n_users, ds.n_items, [10, 6], cfg, seed=0)
    n_layers = model.encoder.n_layers
    sampler = BlockSampler(full, {k: v[:n_layers] if k in ("ui", "iu") else v for k, v in ALL.items()}, n_layers)
    u = np.array([3, 7, 7, 12, 59])
    i = np.array([0, 5, 9, 39, 21])
    j = np.array([1, 2, 9, 30, 0])
    batch = sampler.batch(u, i, j)
    users_s, items_s = model.encode(batch.graph, feats)
    users_f, items_f = model.encode(full.compute_graph(n_layers), feats)
    torch.testing.assert_close(users_s[batch.users_local], users_f[batch.users], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items_s[batch.pos_local], items_f[batch.pos], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items_s[batch.neg_local], items_f[batch.neg], rtol=1e-5, atol=1e-6)
    r_s = modality_ratings(users_s[batch.users_local], items_s[batch.pos_local])
    r_f = modality_ratings(users_f[batch.users], items_f[batch.pos])
    torch.testing.assert_close(fuse(r_s, None, None), fuse(r_f, None, None), rtol=1e-5, atol=1e-5)
    assert PRETRAIN == "pretrain"


def test_finite_fanout_rescales_to_an_unbiased_sum(small):
    """Each kept edge carries full weight x in_degree / sampled_in_degree of its dst node."""
    ds, full, _ = small
    sampler = BlockSampler(full, {"ui": [2, 2], "iu": [2, 2], "ii": [2], "uu": [2]}, 2)
    users = torch.tensor([4, 9])
    items = torch.tensor([6])
    g = sampler.sample(users, items)
    uu = g.user_user
    assert uu.src.numel() <= 4
    src_global = sampler_mid_users(g)[uu.src]
    dst_global = users[uu.dst]
    dense = torch.sparse_coo_tensor(torch.stack([full.user_user.dst, full.user_user.src]), full.user_user.w,
                                    (ds.n_users, ds.n_users), check_invariants=True).to_dense()
    full_deg = (dense > 0).sum(1)
    for e in range(uu.src.numel()):
        d, s = int(dst_global[e]), int(src_global[e])
        kept = int((uu.dst == uu.dst[e]).sum())
        assert kept == min(2, int(full_deg[d]))
        assert float(uu.w[e]) == pytest.approx(float(dense[d, s]) * float(full_deg[d]) / kept, rel=1e-6)
    # a weighted sum over the sample, times nothing else, estimates the full sum:
    # E[sum_kept w * deg/kept] = sum_all w, since each edge is kept with probability kept/deg.


def sampler_mid_users(g):
    """Global ids of the homogeneous layer's source users: the last bipartite step's dst users."""
    ids = g.input_users
    n_users_in = g.input_users.numel()
    for e in g.bipartite:
        where = e.dst_in_src
        # the block's runs are its dst positions (the residual reads them, layers.residual_add)
        assert torch.equal(torch.cat([torch.arange(s, s + n) for s, n in e.dst_runs]), where)
        n_ud = int((where < n_users_in).sum())
        ids = ids[where[:n_ud]]
        n_users_in = n_ud
    return ids


def test_workers_give_the_same_batches(small):
    ds, full, _ = small
    sampler = BlockSampler(full, {"ui": [3, 3], "iu": [3, 3], "ii": [2], "uu": [2]}, 2)
    rng = np.random.default_rng(0)
    trip = [(rng.integers(0, 60, 8), rng.integers(0, 40, 8), rng.integers(0, 40, 8)) for _ in range(4)]
    a = list(sampled_batches(sampler, trip, seed=5, num_workers=0))
    b = list(sampled_batches(sampler, trip, seed=5, num_workers=2))
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        # same batches in the same order; DGL's per-thread RNG makes the samples differ
        assert torch.equal(x.users, y.users) and torch.equal(x.neg, y.neg)
        assert torch.equal(x.graph.output_items, y.graph.output_items)
    again = pickle.loads(pickle.dumps(b[0].graph.item_item))
    assert torch.equal(again.csr.to_dense(), b[0].graph.item_item.csr.to_dense())


def test_fanout_errors():
    with pytest.raises(ConfigError, match="needs 2 entries"):
        check_fanouts({"ui": [5]}, 2)
    with pytest.raises(ConfigError, match="unknown relations"):
        check_fanouts({"xx": [5]}, 2)
    with pytest.raises(ConfigError, match="-1 \\(all\\) or > 0"):
        check_fanouts({"uu": [0]}, 2)


def test_a_batch_with_given_output_items_encodes_those_items(small):
    """A worker's batch: its triplets' users, and the step's items it owns as output items
    (not the triplets' own); their vectors equal the full-graph ones."""
    ds, full, feats = small
    model = build_model(ds.n_users, ds.n_items, [10, 6], ModelConfig(dim=8, variant="margo"), seed=0)
    sampler = BlockSampler(full, ALL, model.encoder.n_layers)
    items = np.array([2, 11, 39])
    batch = sampler.batch(np.array([3, 7, 3]), np.array([0, 5, 9]), np.array([1, 2, 9]), items)
    assert batch.pos_local is None and batch.neg_local is None
    assert batch.graph.output_items.tolist() == items.tolist()
    assert batch.graph.output_users.tolist() == [3, 7]
    users_s, items_s = model.encode(batch.graph, feats)
    users_f, items_f = model.encode(full.compute_graph(model.encoder.n_layers), feats)
    torch.testing.assert_close(items_s, items_f[torch.from_numpy(items)], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(users_s[batch.users_local], users_f[torch.tensor([3, 7, 3])], rtol=1e-5, atol=1e-6)


def test_a_seed_outside_the_graph_is_an_error_not_an_abort(small):
    _ds, full, _feats = small
    sampler = BlockSampler(full, ALL, 2)
    with pytest.raises(ValueError, match=r"item ids span \[2, 40\], the graph has 40 items"):
        sampler.sample(torch.tensor([3]), torch.tensor([2, 40]))


def test_one_buffer_sends_a_batch_as_one_tensor_and_gives_it_back(small):
    ds, full, _ = small
    sampler = BlockSampler(full, {"ui": [3, 3], "iu": [3, 3], "ii": [2], "uu": [2]}, 2)
    rng = np.random.default_rng(1)
    batch = sampler.batch(rng.integers(0, 60, 8), rng.integers(0, 40, 8), rng.integers(0, 40, 8))
    shipped = pickle.loads(pickle.dumps(OneBuffer(batch)))
    tensors = [v for v in vars(shipped).values() if isinstance(v, torch.Tensor)]
    assert len(tensors) == 1 and tensors[0].dtype == torch.uint8
    back = shipped.unpack()
    assert torch.equal(back.users, batch.users) and torch.equal(back.neg_local, batch.neg_local)
    for got, want in zip(back.graph.bipartite + [back.graph.item_item],
                         batch.graph.bipartite + [batch.graph.item_item]):
        assert torch.equal(got.csr_t.to_dense(), want.csr_t.to_dense()) and got.w.dtype == torch.float32
        assert got.dst_runs == want.dst_runs
    # a tensor named twice travels once and stays one tensor
    rows = full.item_item.rows(torch.tensor([2, 0]))
    assert rows.src is rows.csr.indices
    again = OneBuffer(rows).unpack()
    assert again.src.data_ptr() == again.csr.indices.data_ptr()
    # empty and 0-d tensors, bools
    odd = OneBuffer({"e": torch.zeros(0, 3), "s": torch.tensor(2.5), "b": torch.tensor([True, False])}).unpack()
    assert odd["e"].shape == (0, 3) and float(odd["s"]) == 2.5 and odd["b"].tolist() == [True, False]
