"""DGL 2.1.0 works through margo_dist.graph.dgl_backend on torch 2.13 (GraphBolt stubbed).

Each test checks content against the edge lists it was built from, so a DGL that
imports but returns wrong graphs, samples or partitions fails here.
"""

from __future__ import annotations

import ctypes
import json
import os

import numpy as np
import pytest
import torch

from margo_dist.graph.dgl_backend import captured_output, dgl, get_dgl

N_USERS, N_ITEMS = 30, 20


def _edges(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Deduplicated random edges for the four relations (no self loops on ii/uu)."""
    rng = np.random.default_rng(seed)

    def dedup(src: np.ndarray, dst: np.ndarray, no_loops: bool) -> tuple[np.ndarray, np.ndarray]:
        pairs = np.unique(np.stack([src, dst], 1), axis=0)
        if no_loops:
            pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)

    u, i = dedup(rng.integers(0, N_USERS, 150), rng.integers(0, N_ITEMS, 150), False)
    ii = dedup(rng.integers(0, N_ITEMS, 40), rng.integers(0, N_ITEMS, 40), True)
    uu = dedup(rng.integers(0, N_USERS, 40), rng.integers(0, N_USERS, 40), True)
    return {"ui": (u, i), "iu": (i, u), "ii": ii, "uu": uu}


CANON = {"ui": ("user", "ui", "item"), "iu": ("item", "iu", "user"),
         "ii": ("item", "ii", "item"), "uu": ("user", "uu", "user")}


def _graph(edges: dict[str, tuple[np.ndarray, np.ndarray]]):
    data = {CANON[r]: (torch.from_numpy(s), torch.from_numpy(d)) for r, (s, d) in edges.items()}
    return dgl.heterograph(data, num_nodes_dict={"user": N_USERS, "item": N_ITEMS})


def _pairs(src, dst) -> set[tuple[int, int]]:
    return set(zip(np.asarray(src).tolist(), np.asarray(dst).tolist()))


def test_backend_is_dgl_2_1_with_pytorch() -> None:
    assert get_dgl() is dgl
    assert dgl.__version__.startswith("2.1")
    assert dgl.backend.backend_name == "pytorch"


def test_heterograph_holds_given_edges() -> None:
    edges = _edges()
    g = _graph(edges)
    assert g.num_nodes("user") == N_USERS and g.num_nodes("item") == N_ITEMS
    for rel, (s, d) in edges.items():
        assert g.num_edges(rel) == len(s)
        gs, gd = g.edges(etype=rel)
        assert _pairs(gs, gd) == _pairs(s, d)
    # ui and iu are reverses: out-degree of users on ui equals in-degree on iu.
    ui_deg = np.bincount(edges["ui"][0], minlength=N_USERS)
    assert np.array_equal(g.out_degrees(etype="ui").numpy(), ui_deg)
    assert np.array_equal(g.in_degrees(etype="iu").numpy(), ui_deg)


def test_neighbor_sampler_per_relation_fanouts() -> None:
    edges = _edges()
    g = _graph(edges)
    dgl.seed(0)
    seeds = torch.tensor([0, 3, 7])
    # Outer layer: 2 items per user, all users per item, 1 user-user neighbour, no item-item.
    # Inner layer: every neighbour on every relation.
    fanouts = [{"ui": -1, "iu": 2, "ii": 0, "uu": 1}, {"ui": -1, "iu": -1, "ii": -1, "uu": -1}]
    sampler = dgl.dataloading.NeighborSampler(fanouts)
    input_nodes, output_nodes, blocks = sampler.sample_blocks(g, {"user": seeds})
    assert len(blocks) == 2
    assert torch.equal(output_nodes["user"], seeds)
    last = blocks[-1]
    assert torch.equal(last.dstnodes["user"].data[dgl.NID], seeds)

    # The last block (seed layer) uses fanouts[-1] = all neighbours: exact neighbour sets.
    true_iu = _pairs(edges["iu"][0], edges["iu"][1])
    true_uu = _pairs(edges["uu"][0], edges["uu"][1])
    s, d = last.edges(etype="iu")
    got = _pairs(last.srcnodes["item"].data[dgl.NID][s], last.dstnodes["user"].data[dgl.NID][d])
    assert got == {(i, u) for (i, u) in true_iu if u in seeds.tolist()}
    s, d = last.edges(etype="uu")
    got = _pairs(last.srcnodes["user"].data[dgl.NID][s], last.dstnodes["user"].data[dgl.NID][d])
    assert got == {(a, b) for (a, b) in true_uu if b in seeds.tolist()}

    # The first block uses fanouts[0]: iu capped at 2 per user, uu at 1, ii empty,
    # every sampled edge is a real edge, and dst nodes are a prefix of src nodes.
    first = blocks[0]
    s, d = first.edges(etype="iu")
    src_ids = first.srcnodes["item"].data[dgl.NID][s]
    dst_ids = first.dstnodes["user"].data[dgl.NID][d]
    assert _pairs(src_ids, dst_ids) <= true_iu
    deg = np.bincount(edges["iu"][1], minlength=N_USERS)
    per_user = np.bincount(dst_ids.numpy(), minlength=N_USERS)
    dst_users = first.dstnodes["user"].data[dgl.NID].numpy()
    assert np.array_equal(per_user[dst_users], np.minimum(deg[dst_users], 2))
    assert first.num_edges("ii") == 0
    s, d = first.edges(etype="uu")
    uu_dst = first.dstnodes["user"].data[dgl.NID][d].numpy()
    uu_deg = np.bincount(edges["uu"][1], minlength=N_USERS)
    assert np.array_equal(np.bincount(uu_dst, minlength=N_USERS)[dst_users], np.minimum(uu_deg[dst_users], 1))
    for ntype in ("user", "item"):
        n_dst = first.num_dst_nodes(ntype)
        assert torch.equal(first.srcnodes[ntype].data[dgl.NID][:n_dst], first.dstnodes[ntype].data[dgl.NID])
    assert torch.equal(input_nodes["user"], first.srcnodes["user"].data[dgl.NID])


@pytest.mark.parametrize("method", ["random", "metis"])
def test_partition_graph_round_trip(tmp_path, method: str) -> None:
    edges = _edges()
    g = _graph(edges)
    dgl.seed(0)
    np.random.seed(0)
    out = str(tmp_path / method)
    orig_nids, orig_eids = dgl.distributed.partition_graph(
        g, "tiny", 2, out, part_method=method, return_mapping=True)
    config = os.path.join(out, "tiny.json")
    with open(config) as fh:
        meta = json.load(fh)
    assert meta["num_parts"] == 2
    # The mapping from shuffled to original ids is a permutation per node type.
    assert sorted(orig_nids["user"].tolist()) == list(range(N_USERS))
    assert sorted(orig_nids["item"].tolist()) == list(range(N_ITEMS))

    owners = {"user": [], "item": []}
    recovered: dict[str, set[tuple[int, int]]] = {r: set() for r in edges}
    for part in range(2):
        local, _nfeat, _efeat, gpb, name, ntypes, etypes = dgl.distributed.load_partition(config, part)
        assert name == "tiny" and gpb.partid == part and gpb.num_partitions() == 2
        assert sorted(ntypes) == ["item", "user"]
        inner = local.ndata["inner_node"].bool()
        ntype_ids, type_wise = gpb.map_to_per_ntype(local.ndata[dgl.NID][inner])
        for t, ntype in enumerate(gpb.ntypes):
            owners[ntype].append(orig_nids[ntype][type_wise[ntype_ids == t]])
        # Every inner edge maps back to an original edge of its relation.
        emask = local.edata["inner_edge"].bool()
        src, dst = local.edges()
        src, dst = src[emask], dst[emask]
        etype_ids, _ = gpb.map_to_per_etype(local.edata[dgl.EID][emask])
        s_t, s_ids = gpb.map_to_per_ntype(local.ndata[dgl.NID][src])
        d_t, d_ids = gpb.map_to_per_ntype(local.ndata[dgl.NID][dst])
        for e, canon in enumerate(gpb.canonical_etypes):
            sel = etype_ids == e
            st, _, dt = canon
            assert bool((s_t[sel] == gpb.ntypes.index(st)).all())
            assert bool((d_t[sel] == gpb.ntypes.index(dt)).all())
            pairs = _pairs(orig_nids[st][s_ids[sel]], orig_nids[dt][d_ids[sel]])
            assert not (pairs & recovered[canon[1]]), "an edge is inner to both partitions"
            recovered[canon[1]] |= pairs
    # Each node has exactly one owner, and the inner edges of the parts are the graph.
    for ntype, n in (("user", N_USERS), ("item", N_ITEMS)):
        ids = torch.cat(owners[ntype]).tolist()
        assert sorted(ids) == list(range(n))
        assert all(len(o) > 0 for o in owners[ntype])
    for rel, (s, d) in edges.items():
        assert recovered[rel] == _pairs(s, d)


def test_captured_output_keeps_every_level_and_restores(capfd) -> None:
    capfd.readouterr()
    with captured_output() as log:
        print("py out")
        os.write(1, b"fd one\n")
        os.write(2, b"fd two\n")
        ctypes.CDLL(None).puts(b"c stdio")  # buffered by C: flushed before the descriptors are restored
    assert capfd.readouterr() == ("", "")
    assert log.text.splitlines()[0] == "py out"
    assert {"fd one", "fd two", "c stdio"} <= set(log.text.splitlines())
    with pytest.raises(ValueError):
        with captured_output() as log:
            os.write(2, b"before the error\n")
            raise ValueError("x")
    assert log.text == "before the error\n"
    os.write(1, b"visible\n")
    assert capfd.readouterr().out == "visible\n"
