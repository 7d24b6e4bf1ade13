"""Graph shards: partition_graphs, load_shard, artifacts_from_shards, graph.shards, the CLI.

Expected values come from the artefacts build_graphs makes of a small synthetic dataset,
never from a partition run: every edge, value and owner is checked against them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid

import numpy as np
import pytest
import torch

from margo_dist.config import GraphConfig
from margo_dist.data import io as mio
from margo_dist.data.synth import SynthSpec, make_synthetic, write_synthetic
from margo_dist.errors import ConfigError, DataError
from margo_dist.graph import partition as part_mod
from margo_dist.graph.build import GraphArtifacts, build_graphs, graph_key
from margo_dist.graph.partition import (MANIFEST, artifacts_from_shards, graph_relations, load_feature_rows,
                                        load_owners, load_shard, partition_graphs, read_shard_manifest)
from margo_dist.graph.source import load_graph_source
from margo_dist.graph.tensors import full_graph

MODS = ["image", "text"]
CFG = GraphConfig(item_k=4, user_k=5)


@pytest.fixture(scope="module")
def ds():
    data, _ = make_synthetic(60, 40, 480, {"image": 8, "text": 6}, seed=1)
    return data


@pytest.fixture(scope="module")
def art(ds) -> GraphArtifacts:
    return build_graphs(ds, CFG, MODS)


def _assert_same(a: GraphArtifacts, b: GraphArtifacts) -> None:
    assert (a.n_users, a.n_items, a.key, a.modalities) == (b.n_users, b.n_items, b.key, b.modalities)
    for name in ("train_user", "train_item", "user_degree", "item_degree", "user_nbr", "user_cnt"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    for m in a.modalities:
        for x, y in zip(a.item_knn[m], b.item_knn[m]):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y, err_msg=m)


def _expected_edges(art: GraphArtifacts) -> dict[str, dict[tuple[int, int], float | None]]:
    """(src, dst) -> value of every relation, straight from the artefact tables."""
    out: dict[str, dict[tuple[int, int], float | None]] = {}
    pairs = list(zip(art.train_user.tolist(), art.train_item.tolist()))
    out["ui"] = {p: None for p in pairs}
    out["iu"] = {(i, u): None for u, i in pairs}
    for m in art.modalities:
        idx, sim = art.item_knn[m]
        out[f"ii_{m}"] = {(int(idx[r, c]), r): float(sim[r, c]) for r in range(idx.shape[0])
                          for c in range(idx.shape[1]) if idx[r, c] >= 0}
    out["uu"] = {(int(art.user_nbr[r, c]), r): float(art.user_cnt[r, c]) for r in range(art.n_users)
                 for c in range(art.user_nbr.shape[1]) if art.user_nbr[r, c] >= 0}
    return out


def test_relations_are_deduplicated(art) -> None:
    doubled = dataclasses.replace(art, train_user=np.concatenate([art.train_user, art.train_user[:7]]),
                                  train_item=np.concatenate([art.train_item, art.train_item[:7]]))
    rels = graph_relations(doubled, MODS)
    assert rels["ui"].src.size == art.train_user.size
    np.testing.assert_array_equal(rels["ui"].src, art.train_user)
    by_item = np.lexsort((art.train_user, art.train_item))
    np.testing.assert_array_equal(rels["iu"].src, art.train_item[by_item])
    np.testing.assert_array_equal(rels["iu"].dst, art.train_user[by_item])
    # A kNN row listing a neighbour twice keeps one edge, with its first value.
    idx, sim = (a.copy() for a in art.item_knn["image"])
    idx[3, 1], sim[3, 1] = idx[3, 0], 0.25
    dup = dataclasses.replace(art, item_knn={**art.item_knn, "image": (idx, sim)})
    r = graph_relations(dup, MODS)["ii_image"]
    sel = r.dst == 3
    assert sel.sum() == idx.shape[1] - 1
    assert float(r.data[sel & (r.src == idx[3, 0])][0]) == float(sim[3, 0])


def test_one_shard_round_trip_is_exact(tmp_path, art) -> None:
    url = str(tmp_path / "s1")
    man = partition_graphs(art, MODS, url, 1)
    assert man["parts"] == 1 and man["graph_key"] == art.key == read_shard_manifest(url)["graph_key"]
    back = artifacts_from_shards(url)
    _assert_same(back, art)
    # Hence the full-graph edge lists training builds are identical too.
    mix = {"image": 0.3, "text": 0.7}
    fa, fb = full_graph(art, MODS, mix), full_graph(back, MODS, mix)
    for rel in ("bipartite", "item_item", "user_user"):
        ea, eb = getattr(fa, rel), getattr(fb, rel)
        for f in ("src", "dst", "w"):
            assert torch.equal(getattr(ea, f), getattr(eb, f)), (rel, f)
    owners = load_owners(url)
    assert owners["user"].tolist() == [0] * art.n_users and owners["item"].tolist() == [0] * art.n_items
    sh = load_shard(url, 0)
    assert sh.inner_user.all() and sh.inner_item.all()
    assert sorted(sh.user_ids.tolist()) == list(range(art.n_users))


@pytest.mark.parametrize("method", ["metis", "random"])
def test_two_shards_own_every_node_once_and_cover_every_edge(tmp_path, art, method: str) -> None:
    url = str(tmp_path / method)
    man = partition_graphs(art, MODS, url, 2, method)
    assert man["method"] == method
    owners = load_owners(url)
    expected = _expected_edges(art)
    recovered: dict[str, dict[tuple[int, int], float | None]] = {r: {} for r in expected}
    for p in range(2):
        sh = load_shard(url, p)
        assert (sh.part, sh.parts, sh.key) == (p, 2, art.key)
        for t, ids, inner, deg, full_deg in (("user", sh.user_ids, sh.inner_user, sh.user_degree, art.user_degree),
                                             ("item", sh.item_ids, sh.inner_item, sh.item_degree, art.item_degree)):
            # The owner arrays name exactly this shard's inner nodes.
            assert sorted(ids[inner].tolist()) == np.flatnonzero(owners[t] == p).tolist()
            assert inner.any() and len(set(ids.tolist())) == ids.size
            np.testing.assert_array_equal(deg[inner], full_deg[ids[inner]])
            assert np.isnan(deg[~inner]).all()
            g_ids = sh.graph.nodes[t].data["orig_id"].numpy()
            np.testing.assert_array_equal(g_ids, ids)
        for rel in expected:
            s, d, v = sh.edges(rel)
            # An inner edge belongs to the shard owning its destination.
            dst_type = "item" if rel == "ui" or rel.startswith("ii_") else "user"
            assert (owners[dst_type][d] == p).all(), rel
            for k, (a, b) in enumerate(zip(s.tolist(), d.tolist())):
                assert (a, b) not in recovered[rel], f"{rel} edge {(a, b)} inner to two shards"
                recovered[rel][(a, b)] = None if v is None else float(v[k])
            # Every local edge, inner or halo, is a real edge of the relation.
            s_all, d_all, _ = sh.edges(rel, inner_only=False)
            assert set(zip(s_all.tolist(), d_all.tolist())) <= set(expected[rel])
    for rel in expected:
        assert recovered[rel] == expected[rel], rel
    for t, n in (("user", art.n_users), ("item", art.n_items)):
        assert set(owners[t].tolist()) == {0, 1} and owners[t].size == n
    _assert_same(artifacts_from_shards(url), art)


def test_a_shard_loads_from_its_own_files_alone(tmp_path, art) -> None:
    url = str(tmp_path / "full")
    man = partition_graphs(art, MODS, url, 2, "metis")
    alone = tmp_path / "alone"
    keep = [MANIFEST, man["dgl_config"]] + [p for p in man["files"] if p.startswith("part1/")]
    for rel in keep:
        os.makedirs(alone / os.path.dirname(rel), exist_ok=True)
        shutil.copy(os.path.join(url, rel), alone / rel)
    assert not (alone / "part0").exists()
    a, b = load_shard(str(alone), 1), load_shard(url, 1)
    np.testing.assert_array_equal(a.user_ids, b.user_ids)
    np.testing.assert_array_equal(a.item_degree, b.item_degree)
    for rel in ("ui", "ii_text", "uu"):
        for x, y in zip(a.edges(rel), b.edges(rel)):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(DataError, match="shard"):
        load_shard(str(alone), 0)
    with pytest.raises(DataError, match="shard 2"):
        load_shard(url, 2)


def test_each_shard_holds_the_feature_rows_of_the_items_it_owns(tmp_path, ds, art) -> None:
    url = str(tmp_path / "full")
    features = {m: np.asarray(ds.features[m]) for m in MODS}
    man = partition_graphs(art, MODS, url, 2, "metis", features=features)
    owner = load_owners(url)["item"]
    for part in range(2):
        ids, rows = load_feature_rows(url, part, MODS)
        np.testing.assert_array_equal(ids, np.flatnonzero(owner == part))
        for m in MODS:
            np.testing.assert_array_equal(rows[m], features[m][ids])
    assert sorted(man["feature_rows"]) == MODS
    # shard 1's rows read with shard 0's feature files gone; DGL's shard loader never reads them
    shutil.rmtree(os.path.join(url, "part0", "features"))
    ids, rows = load_feature_rows(url, 1, ["text"])
    np.testing.assert_array_equal(rows["text"], features["text"][ids])
    assert load_shard(url, 0).part == 0
    with pytest.raises(DataError, match="part0/features/text.npy: file not found"):
        load_feature_rows(url, 0, ["text"])
    # a set made without features says how to make one with them
    bare = str(tmp_path / "bare")
    partition_graphs(art, MODS, bare, 2, "metis")
    with pytest.raises(DataError, match=r"no feature rows of modalities \['image'\].*data partition"):
        load_feature_rows(bare, 0, ["image"])
    with pytest.raises(DataError, match="rows of 40 items"):
        partition_graphs(art, MODS, bare, 2, "metis", features={**features, "text": features["text"][:5]})


def test_memory_url_and_replacement(art) -> None:
    base = f"memory://shards-{uuid.uuid4().hex}"
    url = mio.join(base, "set")
    try:
        partition_graphs(art, MODS, url, 2, "random", seed=3)
        assert mio.listdir(base) == ["set"]
        first = load_owners(url)
        _assert_same(artifacts_from_shards(url), art)
        sh = load_shard(url, 1)
        assert sorted(sh.item_ids[sh.inner_item].tolist()) == np.flatnonzero(first["item"] == 1).tolist()
        # Same seed, same assignment.
        partition_graphs(art, MODS, url, 2, "random", seed=3)
        again = load_owners(url)
        np.testing.assert_array_equal(again["user"], first["user"])
        # A new set replaces the old one whole; no temporary folder is left.
        partition_graphs(art, MODS, url, 1, "metis")
        assert read_shard_manifest(url)["parts"] == 1
        assert mio.listdir(base) == ["set"]
        assert not mio.exists(mio.join(url, "part1"))
        _assert_same(artifacts_from_shards(url), art)
    finally:
        mio.remove(base)


def test_failed_write_leaves_nothing(tmp_path, art, monkeypatch) -> None:
    url = str(tmp_path / "out" / "set")
    calls = []

    def failing(local_dir, rel_paths, fs, dest):
        calls.append(rel_paths)
        fs.makedirs(dest, exist_ok=True)
        fs.put_file(os.path.join(local_dir, *rel_paths[0].split("/")), f"{dest}/{rel_paths[0]}")
        raise OSError("disk full")

    monkeypatch.setattr(part_mod, "_upload", failing)
    with pytest.raises(OSError, match="disk full"):
        partition_graphs(art, MODS, url, 2, "metis")
    assert calls and calls[0][-1] == MANIFEST
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("parts, method, match", [
    (0, "metis", "--parts=0"), (-2, "random", "--parts=-2"), (2, "kway", "'kway'"), (41, "metis", "--parts=41"),
])
def test_bad_parts_or_method(tmp_path, art, parts: int, method: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        partition_graphs(art, MODS, str(tmp_path / "x"), parts, method)
    assert not (tmp_path / "x").exists()


def test_modalities_must_match_artifacts(tmp_path, art) -> None:
    with pytest.raises(DataError, match="'audio'"):
        partition_graphs(art, ["image", "audio"], str(tmp_path / "x"), 1)
    with pytest.raises(DataError, match="every modality"):
        partition_graphs(art, ["image"], str(tmp_path / "x"), 1)


def test_graph_source_uses_matching_shards_only(tmp_path, ds, art) -> None:
    url = str(tmp_path / "shards")
    partition_graphs(art, MODS, url, 1)
    cfg = dataclasses.replace(CFG, shards=url, cache_dir=str(tmp_path / "cache"))
    _assert_same(load_graph_source(ds, str(tmp_path / "ds"), cfg, MODS, build=False), art)
    assert not (tmp_path / "cache").exists()
    # Other graph parameters, or other data: refused with both keys named.
    other_cfg = dataclasses.replace(cfg, item_k=3)
    with pytest.raises(DataError, match="other data or graph parameters") as err:
        load_graph_source(ds, str(tmp_path / "ds"), other_cfg, MODS)
    assert art.key in str(err.value) and graph_key(ds, other_cfg, MODS) in str(err.value)
    other_ds, _ = make_synthetic(60, 40, 480, {"image": 8, "text": 6}, seed=2)
    with pytest.raises(DataError, match="other data"):
        load_graph_source(other_ds, str(tmp_path / "ds"), cfg, MODS)
    # Without shards it is the artefact cache.
    plain = dataclasses.replace(cfg, shards="")
    _assert_same(load_graph_source(ds, str(tmp_path / "ds"), plain, MODS), art)
    assert (tmp_path / "cache").exists()
    with pytest.raises(DataError, match="manifest not found"):
        load_graph_source(ds, "", dataclasses.replace(cfg, shards=str(tmp_path / "nowhere")), MODS)


def test_cli_data_partition(tmp_path, capsys) -> None:
    from margo_dist.cli import main

    spec = SynthSpec(n_users=50, n_items=30, n_interactions=300, modality_dims={"image": 6, "text": 5}, seed=4)
    ds_url = str(tmp_path / "ds")
    ds = write_synthetic(spec, ds_url)
    over = [f"data.path={ds_url}", "graph.item_k=3", "graph.user_k=4"]
    assert main(["data", "partition", "--parts", "2", "--method", "random", *over]) == 0
    cfg = dataclasses.replace(GraphConfig(), item_k=3, user_k=4)
    key = graph_key(ds, cfg, ["image", "text"])
    url = os.path.join(ds_url, ".margo_cache", f"shards-{key}-random-2")
    man = read_shard_manifest(url)
    assert (man["parts"], man["method"], man["graph_key"]) == (2, "random", key)
    assert url in capsys.readouterr().out
    _assert_same(artifacts_from_shards(url), build_graphs(ds, cfg, ["image", "text"]))
    out = str(tmp_path / "mine")
    assert main(["data", "partition", "--parts", "0", "--out", out, *over]) == 2
    assert "--parts=0" in capsys.readouterr().err
    with open(os.path.join(url, MANIFEST)) as fh:
        assert json.load(fh)["n_users"] == 50


@pytest.mark.parametrize("method", ["metis", "random"])
def test_partition_prints_nothing(tmp_path, art, capfd, method: str) -> None:
    capfd.readouterr()
    partition_graphs(art, MODS, str(tmp_path / "s"), 2, method)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_failed_partition_carries_what_dgl_printed(tmp_path, art, capfd, monkeypatch) -> None:
    def failing(*args, **kwargs):
        print("python side")
        os.write(2, b"native side\n")
        raise AssertionError("no edges")

    monkeypatch.setattr(part_mod.dgl.distributed, "partition_graph", failing)
    capfd.readouterr()
    with pytest.raises(DataError, match=r"(?s)AssertionError: no edges.*DGL printed:\npython side\nnative side"):
        partition_graphs(art, MODS, str(tmp_path / "s"), 2, "random")
    assert capfd.readouterr() == ("", "")

    def crashing(*args, **kwargs):
        os.write(1, b"about to crash\n")
        raise RuntimeError("boom")

    monkeypatch.setattr(part_mod.dgl.distributed, "partition_graph", crashing)
    with pytest.raises(RuntimeError, match="boom") as info:
        partition_graphs(art, MODS, str(tmp_path / "s"), 2, "random")
    assert "about to crash" in "".join(info.value.__notes__)
    assert capfd.readouterr() == ("", "")


def test_out_of_range_ids_are_named(tmp_path, art) -> None:
    bad = dataclasses.replace(art, train_item=art.train_item.copy())
    bad.train_item[5] = art.n_items
    with pytest.raises(DataError, match=rf"train_item\[5\]={art.n_items} is outside \[0, {art.n_items}\)"):
        partition_graphs(bad, MODS, str(tmp_path / "x"), 1)
    idx, sim = (a.copy() for a in art.item_knn["text"])
    idx[7, 2] = 99
    bad = dataclasses.replace(art, item_knn={**art.item_knn, "text": (idx, sim)})
    with pytest.raises(DataError, match=r"item_knn\['text'\]: row 7 column 2 holds id 99"):
        partition_graphs(bad, MODS, str(tmp_path / "x"), 1)
    assert not (tmp_path / "x").exists()


def test_padded_rows_and_an_empty_relation_round_trip(tmp_path, art) -> None:
    nbr, cnt = art.user_nbr.copy(), art.user_cnt.copy()
    nbr[:10, 2:], cnt[:10, 2:] = -1, 0.0
    idx, sim = (a.copy() for a in art.item_knn["text"])
    idx[3, 1:], sim[3, 1:] = -1, 0.0
    padded = dataclasses.replace(art, user_nbr=nbr, user_cnt=cnt, item_knn={**art.item_knn, "text": (idx, sim)})
    url = str(tmp_path / "padded")
    man = partition_graphs(padded, MODS, url, 2, "metis")
    assert man["relations"]["uu"]["edges"] == int((nbr >= 0).sum())
    _assert_same(artifacts_from_shards(url), padded)
    # No co-users at all: the relation is left out of the DGL graph and comes back empty.
    empty = dataclasses.replace(art, user_nbr=np.full_like(nbr, -1), user_cnt=np.zeros_like(cnt))
    url = str(tmp_path / "empty")
    partition_graphs(empty, MODS, url, 2, "random")
    sh = load_shard(url, 0)
    assert ("user", "uu", "user") not in sh.graph.canonical_etypes
    assert sh.edges("uu")[0].size == 0
    _assert_same(artifacts_from_shards(url), empty)
