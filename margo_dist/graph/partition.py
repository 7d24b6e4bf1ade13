"""Graph shards: the training graph split with DGL's ``partition_graph``, on any fsspec URL.

One shard set serves both modes: local training reads a set with one shard, and the
distributed trainer gives each worker one shard, whose inner nodes are the rows that
worker owns (docs/architecture.md, owner rule). The heterograph holds every relation the
encoder propagates over, so a shard carries its nodes' whole 1-hop neighbourhood:

- ``('user', 'ui', 'item')`` and ``('item', 'iu', 'user')``: both directions of each
  training edge;
- ``('item', 'ii_<modality>', 'item')``: neighbour -> item for each modality's kNN list,
  edge data ``sim``;
- ``('user', 'uu', 'user')``: co-user -> user, edge data ``cnt``;
- node data ``degree``: full-graph training degree of users and items.

Every relation is deduplicated first (METIS crashes on duplicate edges) and a relation
without edges is left out (DGL cannot partition an empty edge type). DGL writes the
partition into a local folder; it is copied to the destination under a temporary name
and renamed, so a reader never sees a half-written set. Beside DGL's files the set
holds ``manifest.json``, ``owner_<type>.npy`` (shard of each original id),
``nid_<type>.npy`` (original id of each id in DGL's reshuffled numbering) and, per
shard, ``part<k>/orig_nid.npy`` (original id of each local node), so a shard can be
used with original ids without any other shard; a set made for workers also holds each
shard's raw-feature rows (``part<k>/features/``) and receptive field (``part<k>/field/``,
``graph/field.py``), all a sampled worker reads of the data.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from margo_dist.data import io as mio
from margo_dist.data.dataset import pair_codes, split_pair_codes
from margo_dist.errors import ConfigError, DataError
from margo_dist.graph.build import GraphArtifacts, dedup_pairs, fill_ranked, padded_edges
from margo_dist.graph.dgl_backend import Captured, captured_output, dgl
from margo_dist.graph.field import FIELD, write_fields
from margo_dist.graph.shardset import FORMAT_VERSION, MANIFEST, check_part, load_owners, read_shard_manifest

FEATURE_ROWS = "features"  # part<k>/features/<modality>.npy: the rows of the items shard k owns
GRAPH_NAME = "margo"
METHODS = ("metis", "random")
NTYPES = ("user", "item")
_MODALITY_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def relation_types(modalities: list[str]) -> dict[str, tuple[str, str, str]]:
    """Relation name -> canonical (src type, name, dst type), in a fixed order."""
    rels = {"ui": ("user", "ui", "item"), "iu": ("item", "iu", "user")}
    for m in modalities:
        rels[f"ii_{m}"] = ("item", f"ii_{m}", "item")
    rels["uu"] = ("user", "uu", "user")
    return rels


def _edge_field(rel: str) -> str | None:
    """Name of the edge data a relation carries (None: structure only)."""
    if rel == "uu":
        return "cnt"
    if rel.startswith("ii_"):
        return "sim"
    return None


@dataclass
class Relation:
    """Deduplicated edges of one relation in original ids, sorted by (src, dst)."""

    src: np.ndarray  # int64 [E]
    dst: np.ndarray  # int64 [E]
    data: np.ndarray | None  # float32 [E] (sim or cnt) or None


def _dedup(src: np.ndarray, dst: np.ndarray, n_dst: int, data: np.ndarray | None) -> Relation:
    """Unique (src, dst) pairs; a repeated pair keeps the data of its first occurrence."""
    uniq, first = np.unique(pair_codes(src, dst, n_dst), return_index=True)
    return Relation(*split_pair_codes(uniq, n_dst), None if data is None else data[first].astype(np.float32))


def _padded_edges(idx: np.ndarray, val: np.ndarray, n_src: int, where: str) -> tuple[np.ndarray, ...]:
    """(neighbour, row, value) of every non-padding entry of a -1 padded neighbour table."""
    if idx.ndim != 2 or idx.shape != val.shape:
        raise DataError(f"{where}: id and value tables must be 2-d and aligned, got {idx.shape} and {val.shape}")
    bad = np.argwhere(idx >= n_src)
    if bad.size:
        r, c = (int(x) for x in bad[0])
        raise DataError(f"{where}: row {r} column {c} holds id {int(idx[r, c])}, outside [0, {n_src})")
    src, rows, valid = padded_edges(idx)
    return src, rows, val[valid]


def graph_relations(art: GraphArtifacts, modalities: list[str]) -> dict[str, Relation]:
    """Every relation of the shard heterograph, deduplicated, from the artefacts."""
    nu, ni = art.n_users, art.n_items
    tu, ti = dedup_pairs(art.train_user, art.train_item, nu, ni, f"graph artefacts {art.key}",
                         names=("train_user", "train_item"), cell="{field}[{row}]")
    ui = Relation(tu, ti, None)
    rels = {"ui": ui, "iu": _dedup(ui.dst, ui.src, nu, None)}
    for m in modalities:
        idx, sim = art.item_knn[m]
        src, dst, val = _padded_edges(np.asarray(idx), np.asarray(sim), ni,
                                      f"graph artefacts {art.key} item_knn[{m!r}]")
        rels[f"ii_{m}"] = _dedup(src, dst, ni, val)
    src, dst, val = _padded_edges(np.asarray(art.user_nbr), np.asarray(art.user_cnt), nu,
                                  f"graph artefacts {art.key} user_nbr/user_cnt")
    rels["uu"] = _dedup(src, dst, nu, val)
    return rels


def _heterograph(art: GraphArtifacts, rels: dict[str, Relation], modalities: list[str]) -> Any:
    canon = relation_types(modalities)
    data = {canon[r]: (torch.from_numpy(e.src), torch.from_numpy(e.dst)) for r, e in rels.items() if e.src.size}
    hetero = dgl.heterograph(data, num_nodes_dict={"user": art.n_users, "item": art.n_items})
    hetero.nodes["user"].data["degree"] = torch.from_numpy(np.asarray(art.user_degree, dtype=np.float32).copy())
    hetero.nodes["item"].data["degree"] = torch.from_numpy(np.asarray(art.item_degree, dtype=np.float32).copy())
    for r, e in rels.items():
        name = _edge_field(r)
        if name is not None and e.src.size:
            hetero.edges[canon[r]].data[name] = torch.from_numpy(e.data)
    return hetero


def _check_request(art: GraphArtifacts, modalities: list[str], parts: int, method: str) -> list[str]:
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ConfigError(f"--parts={parts!r}: the number of shards must be an integer >= 1")
    if method not in METHODS:
        raise ConfigError(f"--method={method!r} is not one of {list(METHODS)}")
    most = min(art.n_users, art.n_items)
    if parts > most:
        raise ConfigError(f"--parts={parts}: every shard needs a user and an item, and the graph has "
                          f"{art.n_users} users and {art.n_items} items")
    mods = list(modalities)
    if len(set(mods)) != len(mods):
        raise ConfigError(f"modalities {mods} repeat a name")
    for m in mods:
        if m not in art.item_knn:
            raise DataError(f"graph artefacts {art.key} have no kNN graph for modality {m!r} "
                            f"(they hold {art.modalities})")
        if not _MODALITY_NAME.match(m):
            raise DataError(f"modality name {m!r} cannot name a DGL edge type: use letters, digits, '_', '.', '-'")
    if sorted(mods) != sorted(art.modalities):
        raise DataError(f"modalities {mods} differ from those of graph artefacts {art.key} ({art.modalities}); "
                        "the shards carry the artefacts' key, so they must carry every modality")
    return mods


def _run_partition(hetero: Any, work: str, parts: int, method: str, seed: int) -> dict[str, np.ndarray]:
    """DGL's partition into ``work``; returns original id per reshuffled id, per node type."""
    dgl.seed(seed)
    log = Captured()
    try:
        with captured_output() as log:  # DGL's prints and METIS's C++ log line are not for the user
            orig_nids, _ = dgl.distributed.partition_graph(hetero, GRAPH_NAME, parts, work, part_method=method,
                                                           return_mapping=True)
    except (IndexError, AssertionError) as exc:
        raise DataError(f"partition_graph with parts={parts}, method={method!r} failed ({type(exc).__name__}: "
                        f"{exc}); DGL needs every shard to own nodes of each type and edges of each relation, "
                        f"so use fewer parts or method=metis{_printed(log)}") from exc
    except Exception as exc:
        exc.add_note(f"partition_graph with parts={parts}, method={method!r} failed{_printed(log)}")
        raise
    return {t: np.asarray(orig_nids[t].numpy(), dtype=np.int64) for t in NTYPES}


def _printed(log: Captured) -> str:
    """What DGL printed before failing, as the tail of an error message ('' if nothing)."""
    text = log.text.strip()
    return f"\nDGL printed:\n{text}" if text else ""


def _local_ids(loc: Any, gpb: Any) -> tuple[np.ndarray, np.ndarray]:
    """(node type name index into NTYPES, reshuffled per-type id) of every local node."""
    type_ids, per_type = gpb.map_to_per_ntype(loc.ndata[dgl.NID])
    names = np.array([NTYPES.index(t) for t in gpb.ntypes], dtype=np.int64)
    return names[type_ids.numpy()], per_type.numpy().astype(np.int64)


def _index_files(work: str, parts: int, orig: dict[str, np.ndarray],
                 n_nodes: dict[str, int]) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Owner arrays and per-shard original ids, written into ``work``; also per-shard counts."""
    config = os.path.join(work, f"{GRAPH_NAME}.json")
    owner = {t: np.full(n_nodes[t], -1, np.int32) for t in NTYPES}
    stats = []
    for p in range(parts):
        loc, _nf, _ef, gpb, *_ = dgl.distributed.load_partition(config, p, load_feats=False)
        tcode, per_type = _local_ids(loc, gpb)
        local_orig = np.empty(per_type.size, np.int64)
        inner = loc.ndata["inner_node"].numpy().astype(bool)
        counts: dict[str, Any] = {"part": p}
        for k, t in enumerate(NTYPES):
            sel = tcode == k
            local_orig[sel] = orig[t][per_type[sel]]
            mine = local_orig[sel & inner]
            if np.any(owner[t][mine] >= 0):
                raise DataError(f"partition {p}: a {t} is inner to two shards (DGL output in {work})")
            owner[t][mine] = p
            counts[f"{t}s"] = int(mine.size)
            counts[f"halo_{t}s"] = int(np.count_nonzero(sel & ~inner))
        counts["edges"] = int(loc.num_edges())
        counts["inner_edges"] = int(loc.edata["inner_edge"].sum())
        stats.append(counts)
        np.save(os.path.join(work, f"part{p}", "orig_nid.npy"), local_orig, allow_pickle=False)
    for t in NTYPES:
        missing = np.flatnonzero(owner[t] < 0)
        if missing.size:
            raise DataError(f"partition: {t} {int(missing[0])} is inner to no shard")
        np.save(os.path.join(work, f"owner_{t}.npy"), owner[t], allow_pickle=False)
        np.save(os.path.join(work, f"nid_{t}.npy"), orig[t], allow_pickle=False)
    return owner, stats


def _walk(folder: str) -> list[str]:
    """Relative ``/`` paths of every file under ``folder``, sorted."""
    out = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            out.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return sorted(out)


def _upload(local_dir: str, rel_paths: list[str], fs: Any, dest: str) -> None:
    """Copy the listed files of ``local_dir`` to ``dest`` on ``fs``, in order."""
    for rel in rel_paths:
        target = posixpath.join(dest, rel)
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
        fs.put_file(os.path.join(local_dir, *rel.split("/")), target)


def _write_feature_rows(work: str, parts: int, item_owner: np.ndarray, features: dict[str, np.ndarray],
                        mods: list[str]) -> dict[str, dict[str, Any]]:
    """``part<k>/features/<modality>.npy``: the raw-feature rows of the items shard k owns,
    in ascending item id (the order of :meth:`RowOwnership.owned`); returns their specs."""
    specs: dict[str, dict[str, Any]] = {}
    for m in mods:
        feat = features[m]
        if feat.ndim != 2 or feat.shape[0] != item_owner.size:
            raise DataError(f"features[{m!r}] has shape {list(feat.shape)}: not the rows of {item_owner.size} items "
                            "(the graph's)")
        specs[m] = {"dim": int(feat.shape[1]), "dtype": str(feat.dtype)}
        for p in range(parts):
            folder = os.path.join(work, f"part{p}", FEATURE_ROWS)
            os.makedirs(folder, exist_ok=True)
            np.save(os.path.join(folder, f"{m}.npy"), np.ascontiguousarray(feat[np.flatnonzero(item_owner == p)]),
                    allow_pickle=False)
    return specs


def partition_graphs(art: GraphArtifacts, modalities: list[str], out_url: str, parts: int,
                     method: str = "metis", seed: int = 0, features: dict[str, np.ndarray] | None = None,
                     field_layers: int | None = None) -> dict:
    """Split the training graph into ``parts`` shards at ``out_url``; returns the manifest.

    ``seed`` seeds DGL's generator (the random method's assignment). ``features``
    (modality -> [n_items, dim]) adds each shard's own raw-feature rows, so that a
    worker reads its rows without opening the dataset's feature files
    (:func:`load_feature_rows`). ``field_layers`` adds each shard's receptive field for
    a model of that many propagation steps (``graph/field.py``): the structure a sampled
    worker reads. A set already at ``out_url`` is replaced only once the new one is complete.
    """
    mods = _check_request(art, modalities, parts, method)
    rels = graph_relations(art, mods)
    hetero = _heterograph(art, rels, mods)
    with tempfile.TemporaryDirectory(prefix="margo-shards-") as work:
        orig = _run_partition(hetero, work, parts, method, seed)
        owner, stats = _index_files(work, parts, orig, {"user": art.n_users, "item": art.n_items})
        rows = _write_feature_rows(work, parts, owner["item"], features, mods) if features is not None else {}
        fields = write_fields(work, art, mods, owner, parts, field_layers) if field_layers is not None else None
        rel_paths = [p for p in _walk(work) if p != MANIFEST]
        manifest = {
            "format_version": FORMAT_VERSION, "parts": parts, "method": method, "seed": int(seed),
            "graph_key": art.key, "n_users": int(art.n_users), "n_items": int(art.n_items),
            "modalities": mods, "dgl_config": f"{GRAPH_NAME}.json",
            "relations": {r: {"canonical": list(relation_types(mods)[r]), "edges": int(e.src.size),
                              "data": _edge_field(r)} for r, e in rels.items()},
            "widths": {"knn": {m: int(np.asarray(art.item_knn[m][0]).shape[1]) for m in mods},
                       "user": int(np.asarray(art.user_nbr).shape[1])},
            "owners": {t: f"owner_{t}.npy" for t in NTYPES},
            "nids": {t: f"nid_{t}.npy" for t in NTYPES},
            "shards": stats,
            "feature_rows": {m: {**spec, "path": f"part{{part}}/{FEATURE_ROWS}/{m}.npy"} for m, spec in rows.items()},
            **({FIELD: fields} if fields is not None else {}),
            "files": {p: os.path.getsize(os.path.join(work, *p.split("/"))) for p in rel_paths},
        }
        with open(os.path.join(work, MANIFEST), "w") as fh:
            json.dump(manifest, fh, indent=1)
        with mio.staging_dir(out_url) as tmp_url:
            fs, tmp = mio.fs_and_path(tmp_url)
            _upload(work, rel_paths + [MANIFEST], fs, tmp)  # manifest last: a set is complete once it has one
    return manifest


def load_feature_rows(url: str, part: int, modalities: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(item ids, modality -> rows) of the items shard ``part`` owns, ids ascending.

    Reads the owner array and shard ``part``'s own feature files only: no other
    shard's rows and nothing of the dataset's feature files.
    """
    man = read_shard_manifest(url)
    check_part(man, url, part)
    specs = man.get("feature_rows", {})
    missing = [m for m in modalities if m not in specs]
    if missing:
        raise DataError(f"{mio.join(url, MANIFEST)}: the shard set holds no feature rows of modalities {missing} "
                        f"(it has {sorted(specs)}); rerun `margo-dist data partition`, which writes each "
                        "shard's rows")
    ids = np.flatnonzero(load_owners(url)["item"] == part)
    rows = {}
    for m in modalities:
        file_url = mio.join(url, specs[m]["path"].format(part=part))
        arr = mio.load_npy(file_url)
        want = (ids.size, int(specs[m]["dim"]))
        if arr.shape != want or str(arr.dtype) != specs[m]["dtype"]:
            raise DataError(f"{file_url}: holds {arr.dtype}{list(arr.shape)}, the manifest and the owner array "
                            f"expect {specs[m]['dtype']}{list(want)}")
        rows[m] = arr
    return ids, rows


@dataclass
class Shard:
    """One shard with original ids: what a worker needs of the graph without other shards.

    ``graph`` is a DGL heterograph over the shard's local nodes (inner and halo); node
    ``j`` of type ``user`` is original user ``user_ids[j]``. It carries node data
    ``orig_id``, ``inner`` and ``degree`` and edge data ``inner`` plus ``sim``/``cnt``.
    Degrees and edge values are stored only for inner nodes and edges (NaN elsewhere),
    as DGL keeps them with their owner.
    """

    part: int
    parts: int
    key: str
    modalities: list[str]
    graph: Any
    user_ids: np.ndarray  # int64 [local users]
    item_ids: np.ndarray  # int64 [local items]
    inner_user: np.ndarray  # bool [local users]
    inner_item: np.ndarray  # bool [local items]
    user_degree: np.ndarray  # float32 [local users]
    item_degree: np.ndarray  # float32 [local items]
    inner_edge: dict[str, np.ndarray] = field(default_factory=dict)  # relation -> bool [local edges]
    edge_data: dict[str, np.ndarray] = field(default_factory=dict)  # ii_<m> -> sim, uu -> cnt

    def node_ids(self, ntype: str) -> np.ndarray:
        return self.user_ids if ntype == "user" else self.item_ids

    def edges(self, rel: str, inner_only: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(src, dst, data) of a relation in original ids; only the inner edges by default."""
        canon = relation_types(self.modalities)
        if rel not in canon:
            raise DataError(f"shard {self.part}: no relation {rel!r}; relations are {list(canon)}")
        st, _, dt = canon[rel]
        if canon[rel] not in self.graph.canonical_etypes:
            empty = np.zeros(0, np.int64)
            return empty, empty.copy(), None if _edge_field(rel) is None else np.zeros(0, np.float32)
        s, d = (x.numpy() for x in self.graph.edges(etype=canon[rel]))
        keep = self.inner_edge[rel] if inner_only else np.ones(s.size, bool)
        data = self.edge_data.get(rel)
        return (self.node_ids(st)[s[keep]], self.node_ids(dt)[d[keep]],
                None if data is None else data[keep])


@contextlib.contextmanager
def _local_copy(url: str, man: dict, part: int) -> Iterator[str]:
    """A local folder holding the DGL config and shard ``part``'s files (no download if local)."""
    fs, path = mio.fs_and_path(url)
    if mio.is_local(fs):
        yield path
        return
    prefix = f"part{part}/"
    # the raw-feature rows and the field are read by load_feature_rows and load_field, not DGL
    skip = (f"{prefix}{FEATURE_ROWS}/", f"{prefix}{FIELD}/")
    wanted = [man["dgl_config"]] + [p for p in man["files"] if p.startswith(prefix) and not p.startswith(skip)]
    with tempfile.TemporaryDirectory(prefix="margo-shard-") as tmp:
        for rel in wanted:
            target = os.path.join(tmp, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                fs.get_file(posixpath.join(path.rstrip("/"), rel), target)
            except FileNotFoundError as exc:
                raise DataError(f"{mio.join(url, rel)}: file of shard {part} listed in the manifest is missing") \
                    from exc
        yield tmp


def _feature_rows(feat: torch.Tensor | None, ids: np.ndarray, inner: np.ndarray, where: str) -> np.ndarray:
    """Per-local-element values from a DGL feature tensor of inner elements.

    DGL stores an inner element's feature at the rank of its reshuffled id among the
    shard's inner elements of that type; non-inner elements get NaN.
    """
    out = np.full(ids.size, np.nan, np.float32)
    if not inner.any():
        return out
    if feat is None:
        raise DataError(f"{where}: feature missing from the shard")
    order = np.sort(ids[inner])
    vals = feat.numpy()
    if vals.shape != (order.size,):
        raise DataError(f"{where}: {vals.shape[0] if vals.ndim else 0} values for {order.size} inner elements")
    out[inner] = vals[np.searchsorted(order, ids[inner])]
    return out


def load_shard(url: str, part: int) -> Shard:
    """Shard ``part`` of the set at ``url``, read from that shard's files and the set's metadata."""
    man = read_shard_manifest(url)
    check_part(man, url, part)
    mods = list(man["modalities"])
    where = f"{url} shard {part}"
    with _local_copy(url, man, part) as folder:
        try:
            loc, nfeat, efeat, gpb, *_ = dgl.distributed.load_partition(
                os.path.join(folder, man["dgl_config"]), part)
        except (AssertionError, FileNotFoundError, dgl.DGLError) as exc:
            raise DataError(f"{where}: DGL cannot load the partition ({type(exc).__name__}: {exc})") from exc
        local_orig = np.load(os.path.join(folder, f"part{part}", "orig_nid.npy"), allow_pickle=False)
    tcode, per_type = _local_ids(loc, gpb)
    if local_orig.shape != tcode.shape:
        raise DataError(f"{where}: part{part}/orig_nid.npy has {local_orig.shape[0]} ids for {tcode.size} nodes")
    inner_node = loc.ndata["inner_node"].numpy().astype(bool)
    # Local node j of a type is the j-th local node of that type, in local order.
    type_pos = np.empty(tcode.size, np.int64)
    ids, inner, degree = {}, {}, {}
    for k, t in enumerate(NTYPES):
        sel = np.flatnonzero(tcode == k)
        type_pos[sel] = np.arange(sel.size)
        ids[t], inner[t] = local_orig[sel], inner_node[sel]
        degree[t] = _feature_rows(nfeat.get(f"{t}/degree"), per_type[sel], inner[t], f"{where} {t}/degree")
    src, dst = (x.numpy() for x in loc.edges())
    etype_ids, per_etype = (x.numpy() for x in gpb.map_to_per_etype(loc.edata[dgl.EID]))
    inner_e = loc.edata["inner_edge"].numpy().astype(bool)
    names = {c[1]: c for c in relation_types(mods).values()}
    data, inner_edge, edge_data = {}, {}, {}
    for e, canon in enumerate(gpb.canonical_etypes):
        rel = canon[1]
        if rel not in names or names[rel] != tuple(canon):
            raise DataError(f"{where}: edge type {canon} is not a relation of modalities {mods}")
        sel = np.flatnonzero(etype_ids == e)
        data[tuple(canon)] = (torch.from_numpy(type_pos[src[sel]]), torch.from_numpy(type_pos[dst[sel]]))
        inner_edge[rel] = inner_e[sel]
        fname = _edge_field(rel)
        if fname is not None:
            key = f"{canon[0]}:{canon[1]}:{canon[2]}/{fname}"
            edge_data[rel] = _feature_rows(efeat.get(key), per_etype[sel], inner_e[sel], f"{where} {key}")
    hetero = dgl.heterograph(data, num_nodes_dict={t: int(ids[t].size) for t in NTYPES})
    for t in NTYPES:
        hetero.nodes[t].data["orig_id"] = torch.from_numpy(ids[t])
        hetero.nodes[t].data["inner"] = torch.from_numpy(inner[t])
        hetero.nodes[t].data["degree"] = torch.from_numpy(degree[t])
    for canon in data:
        hetero.edges[canon].data["inner"] = torch.from_numpy(inner_edge[canon[1]])
        if canon[1] in edge_data:
            hetero.edges[canon].data[_edge_field(canon[1])] = torch.from_numpy(edge_data[canon[1]])
    return Shard(part=part, parts=int(man["parts"]), key=str(man["graph_key"]), modalities=mods, graph=hetero,
                 user_ids=ids["user"], item_ids=ids["item"], inner_user=inner["user"], inner_item=inner["item"],
                 user_degree=degree["user"], item_degree=degree["item"], inner_edge=inner_edge, edge_data=edge_data)


def _rows(dst: np.ndarray, src: np.ndarray, val: np.ndarray, n_rows: int, width: int,
          where: str) -> tuple[np.ndarray, np.ndarray]:
    """-1 / 0 padded [n_rows, width] tables, each row by value descending then lower id (as build.py)."""
    idx = np.full((n_rows, width), -1, np.int64)
    out = np.zeros((n_rows, width), np.float32)
    if dst.size == 0:
        return idx, out
    counts = np.bincount(dst, minlength=n_rows)
    if counts.max() > width:
        r = int(np.argmax(counts))
        raise DataError(f"{where}: row {r} has {int(counts[r])} neighbours, the manifest's width is {width}")
    fill_ranked(dst, src, val, idx, out)
    return idx, out


def artifacts_from_shards(url: str) -> GraphArtifacts:
    """The graph artefacts a shard set was made from, reassembled from every shard's inner part.

    Equal array for array to what ``build_graphs`` gave, so a one-shard set can stand
    in for the artefact cache in local training.
    """
    man = read_shard_manifest(url)
    nu, ni, mods = int(man["n_users"]), int(man["n_items"]), list(man["modalities"])
    degree = {"user": np.zeros(nu, np.float32), "item": np.zeros(ni, np.float32)}
    seen = {"user": np.zeros(nu, np.int64), "item": np.zeros(ni, np.int64)}
    got: dict[str, list[tuple]] = {r: [] for r in relation_types(mods)}
    for p in range(int(man["parts"])):
        sh = load_shard(url, p)
        for t, ids, inner, deg in (("user", sh.user_ids, sh.inner_user, sh.user_degree),
                                   ("item", sh.item_ids, sh.inner_item, sh.item_degree)):
            degree[t][ids[inner]] = deg[inner]
            seen[t] += np.bincount(ids[inner], minlength=seen[t].size)
        for r in got:
            got[r].append(sh.edges(r))
    for t in NTYPES:
        bad = np.flatnonzero(seen[t] != 1)
        if bad.size:
            raise DataError(f"{url}: {t} {int(bad[0])} is inner to {int(seen[t][bad[0]])} shards, expected 1")

    def cat(rel: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        parts = got[rel]
        s = np.concatenate([x[0] for x in parts])
        d = np.concatenate([x[1] for x in parts])
        v = None if parts[0][2] is None else np.concatenate([x[2] for x in parts])
        return s, d, v

    u, i, _ = cat("ui")
    code = pair_codes(u, i, ni)
    uniq = np.unique(code)
    if uniq.size != code.size:
        raise DataError(f"{url}: a training edge is inner to more than one shard")
    widths = man["widths"]
    knn = {}
    for m in mods:
        s, d, v = cat(f"ii_{m}")
        knn[m] = _rows(d, s, v, ni, int(widths["knn"][m]), f"{url} relation ii_{m}")
    s, d, v = cat("uu")
    nbr, cnt = _rows(d, s, v, nu, int(widths["user"]), f"{url} relation uu")
    train_user, train_item = split_pair_codes(uniq, ni)
    return GraphArtifacts(n_users=nu, n_items=ni, train_user=train_user, train_item=train_item,
                          user_degree=degree["user"], item_degree=degree["item"], item_knn=knn,
                          user_nbr=nbr, user_cnt=cnt, key=str(man["graph_key"]))
