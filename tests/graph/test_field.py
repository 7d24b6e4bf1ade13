"""A shard's receptive field (graph/field.py): what it holds, and that it is exact at its own nodes.

Expected masks of the hand-made graph are worked out by hand in the test; the exactness
tests compare against the whole graph built by ``full_graph`` from the same artefacts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from margo_dist.config import GraphConfig, ModelConfig
from margo_dist.data.synth import make_synthetic
from margo_dist.errors import ConfigError, DataError
from margo_dist.graph.build import GraphArtifacts, build_graphs
from margo_dist.graph.field import field_graph, load_field, receptive_field
from margo_dist.graph.partition import load_owners, partition_graphs
from margo_dist.graph.sample import BlockSampler
from margo_dist.graph.tensors import full_graph
from margo_dist.model.margo import build_model

MODS = ["image", "text"]
ALL = {"ui": [-1, -1], "iu": [-1, -1], "ii": [-1], "uu": [-1]}


def hand_graph() -> GraphArtifacts:
    """Users 0-3, items 0-3; edges u0-i0, u1-i0, u1-i1, u2-i2, u3-i3; kNN i0<->i1, i2<->i3;
    co-users u0<->u1."""
    return GraphArtifacts(
        n_users=4, n_items=4, train_user=np.array([0, 1, 1, 2, 3]), train_item=np.array([0, 0, 1, 2, 3]),
        user_degree=np.array([1, 2, 1, 1], np.float32), item_degree=np.array([2, 1, 1, 1], np.float32),
        item_knn={"image": (np.array([[1], [0], [3], [2]]), np.ones((4, 1), np.float32))},
        user_nbr=np.array([[1], [0], [-1], [-1]]), user_cnt=np.array([[1], [1], [0], [0]], np.float32))


def test_the_receptive_field_of_one_user_by_hand():
    art = hand_graph()
    own_u, own_i = np.array([True, False, False, False]), np.zeros(4, bool)
    # the homogeneous layer reads u0 and its co-user u1; one more step reaches their items i0, i1
    users, items = receptive_field(art, own_u, own_i, 2)
    assert users.tolist() == [True, True, False, False] and items.tolist() == [True, True, False, False]
    # one step: the destinations are u0 and u1 only
    users, items = receptive_field(art, own_u, own_i, 1)
    assert users.tolist() == [True, True, False, False] and items.tolist() == [False] * 4
    # an own item adds its kNN neighbour, then their users
    users, items = receptive_field(art, np.zeros(4, bool), np.array([False, False, True, False]), 2)
    assert users.tolist() == [False, False, True, True] and items.tolist() == [False, False, True, True]
    users, items = receptive_field(art, own_u, own_i, 0)
    assert not users.any() and not items.any()


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    """A sparse graph split in 4 (random owners), each shard's field written for 2 steps."""
    ds, _ = make_synthetic(240, 400, 760, {"image": 6, "text": 4}, seed=5)
    art = build_graphs(ds, GraphConfig(item_k=2, user_k=2), MODS)
    url = str(tmp_path_factory.mktemp("field") / "shards")
    man = partition_graphs(art, MODS, url, 4, "random", seed=0, features=ds.features, field_layers=2)
    feats = [torch.from_numpy(ds.features[m]) for m in MODS]
    return ds, art, url, man, feats


def test_a_field_holds_its_own_nodes_rows_and_less_than_the_whole_graph(sparse):
    ds, art, url, man, _feats = sparse
    owners = load_owners(url)
    for p in range(4):
        fld = load_field(url, p, MODS, 2)
        np.testing.assert_array_equal(fld.own_items, np.flatnonzero(owners["item"] == p))
        np.testing.assert_array_equal(fld.knn["text"][0], art.item_knn["text"][0][fld.own_items])
        np.testing.assert_array_equal(fld.user_nbr, art.user_nbr[fld.own_users])
        stats = man["field"]["parts"][p]
        assert stats["train_edges"] == fld.train_user.size < art.train_user.size
        assert stats["edge_fraction"] == pytest.approx(fld.train_user.size / art.train_user.size)


@pytest.mark.parametrize("variant", ["margo", "lightgcn"])
def test_a_field_forward_is_exact_at_its_own_nodes(sparse, variant):
    """The whole-graph forward over a field and blocks sampled from it at fan-out -1 give the
    whole graph's final vectors at the part's own users and items."""
    ds, art, url, _man, feats = sparse
    whole = full_graph(art, MODS, {})
    model = build_model(ds.n_users, ds.n_items, [6, 4], ModelConfig(dim=8, variant=variant), seed=0)
    users_f, items_f = model.encode(whole.compute_graph(2), feats)
    for p in range(4):
        fld = load_field(url, p, MODS, 2)
        graph = field_graph(fld, MODS, {})
        assert graph.bipartite.src.numel() < whole.bipartite.src.numel()
        own_u, own_i = torch.from_numpy(fld.own_users), torch.from_numpy(fld.own_items)
        users, items = model.encode(graph.compute_graph(2), feats)
        torch.testing.assert_close(users[own_u], users_f[own_u], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(items[own_i], items_f[own_i], rtol=1e-5, atol=1e-6)
        block = BlockSampler(graph, ALL, 2).sample(own_u, own_i)
        users, items = model.encode(block, feats)
        torch.testing.assert_close(users, users_f[own_u], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(items, items_f[own_i], rtol=1e-5, atol=1e-6)


def test_a_set_without_fields_or_with_too_few_steps_is_refused(sparse, tmp_path):
    ds, art, url, _man, _feats = sparse
    with pytest.raises(ConfigError, match=r"cover 2 propagation step\(s\), model.n_layers=3"):
        load_field(url, 0, MODS, 3)
    bare = str(tmp_path / "bare")
    partition_graphs(art, MODS, bare, 2, "random", seed=0)
    with pytest.raises(DataError, match="has no receptive fields"):
        load_field(bare, 0, MODS, 2)
    with pytest.raises(DataError, match=r"shard 4 requested, the set has shards 0..3"):
        load_field(url, 4, MODS, 2)
