"""A shard's receptive field: the graph structure one worker reads in sampled mode.

In sampled distributed mode worker r's compute graphs start from its own nodes: the
users of the triplets it takes (the users it owns) and the step's items it owns, whose
final vectors it sends to the other workers (``Recommender.item_vectors``). So a worker
needs, and reads, only

- the kNN rows of its own items and the co-user rows of its own users (the homogeneous
  layer on top of the encoder);
- the training edges into every node within ``layers - 1`` bipartite hops of those
  nodes and of their kNN / co-user neighbours: the destinations of every propagation
  step (both directions of such an edge are kept; the extra direction is unused);
- per node, its training degree and its kNN list length (vectors of every id, a few
  bytes a node), so the edges carry their full-graph weights.

Not DGL's ``num_hops`` halo, which follows every relation at every hop: the field
follows the encoder's order (homogeneous layer last), so it is no larger than needed.
``partition_graphs`` writes each shard's field beside DGL's files
(``part<k>/field/``; the per-node vectors once, in ``field/``), :func:`load_field`
reads one part's, and :func:`field_graph` makes the :class:`FullGraph` over every id
whose edges are the field's: a block sampled from it for the worker's own nodes equals
one sampled from the whole graph at fan-out -1, and a whole-graph forward over it is
exact at the worker's own nodes (tested).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from margo_dist.data import io as mio
from margo_dist.errors import ConfigError, DataError
from margo_dist.graph.build import GraphArtifacts
from margo_dist.graph.shardset import MANIFEST, check_part, load_owners, read_shard_manifest
from margo_dist.graph.tensors import FullGraph, knn_edges, relation_graph, user_edges

FIELD = "field"


def receptive_field(art: GraphArtifacts, own_users: np.ndarray, own_items: np.ndarray,
                    layers: int) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) boolean masks of the nodes whose training edges a worker needs.

    ``own_users``/``own_items``: boolean masks of the nodes it encodes. The homogeneous
    layer reads ``R`` at those and at their kNN / co-user neighbours; each propagation
    step reads its destinations' in-neighbours, which are the next step's destinations.
    """
    if layers == 0:
        return np.zeros(art.n_users, bool), np.zeros(art.n_items, bool)
    users, items = own_users.copy(), own_items.copy()
    for idx, _sim in art.item_knn.values():
        nbr = idx[own_items]
        items[nbr[nbr >= 0]] = True
    nbr = art.user_nbr[own_users]
    users[nbr[nbr >= 0]] = True
    for _ in range(layers - 1):
        grown_users, grown_items = users.copy(), items.copy()
        grown_users[art.train_user[items[art.train_item]]] = True
        grown_items[art.train_item[users[art.train_user]]] = True
        users, items = grown_users, grown_items
    return users, items


def write_fields(work: str, art: GraphArtifacts, modalities: list[str], owner: dict[str, np.ndarray],
                 parts: int, layers: int) -> dict[str, Any]:
    """Each part's field into ``work`` (``part<k>/field/*.npy``, the per-node vectors in
    ``field/``); returns the manifest entry (layers, and per part its nodes and edges)."""
    shared = os.path.join(work, FIELD)
    os.makedirs(shared, exist_ok=True)
    np.save(os.path.join(shared, "user_degree.npy"), art.user_degree.astype(np.float32), allow_pickle=False)
    np.save(os.path.join(shared, "item_degree.npy"), art.item_degree.astype(np.float32), allow_pickle=False)
    for m in modalities:
        length = (art.item_knn[m][0] >= 0).sum(axis=1).astype(np.int32)
        np.save(os.path.join(shared, f"knn_length_{m}.npy"), length, allow_pickle=False)
    whole = int(art.train_user.size)
    stats = []
    for p in range(parts):
        own_u, own_i = owner["user"] == p, owner["item"] == p
        users, items = receptive_field(art, own_u, own_i, layers)
        keep = users[art.train_user] | items[art.train_item]
        folder = os.path.join(work, f"part{p}", FIELD)
        os.makedirs(folder, exist_ok=True)
        arrays = {"train_user": art.train_user[keep], "train_item": art.train_item[keep],
                  "user_nbr": art.user_nbr[own_u], "user_cnt": art.user_cnt[own_u]}
        for m in modalities:
            arrays[f"knn_idx_{m}"], arrays[f"knn_sim_{m}"] = (a[own_i] for a in art.item_knn[m])
        for name, arr in arrays.items():
            np.save(os.path.join(folder, f"{name}.npy"), np.ascontiguousarray(arr), allow_pickle=False)
        stats.append({"part": p, "users": int(users.sum()), "items": int(items.sum()),
                      "train_edges": int(keep.sum()), "edge_fraction": float(keep.sum() / max(whole, 1))})
    return {"layers": int(layers), "train_edges": whole, "parts": stats}


@dataclass
class Field:
    """One part's receptive field (:func:`load_field`), in original ids."""

    part: int
    layers: int
    n_users: int
    n_items: int
    own_users: np.ndarray  # int64, ascending
    own_items: np.ndarray
    train_user: np.ndarray  # the field's training edges
    train_item: np.ndarray
    user_degree: np.ndarray  # float32 [n_users]: every node's full training degree
    item_degree: np.ndarray
    knn: dict[str, tuple[np.ndarray, np.ndarray]]  # modality -> (idx, sim) rows of own_items
    knn_length: dict[str, np.ndarray]  # modality -> int32 [n_items]: every item's kNN list length
    user_nbr: np.ndarray  # rows of own_users
    user_cnt: np.ndarray


def field_layers(man: dict) -> int | None:
    """The propagation steps a shard set's fields cover (None: it has no fields)."""
    entry = man.get(FIELD)
    return int(entry["layers"]) if isinstance(entry, dict) and "layers" in entry else None


def fields_cover(man: dict, layers: int) -> bool:
    """Whether a shard set (manifest ``man``) has fields for a model of ``layers`` steps."""
    have = field_layers(man)
    return have is not None and have >= layers


def load_field(url: str, part: int, modalities: list[str], layers: int) -> Field:
    """Part ``part``'s field from the shard set at ``url``, for a model of ``layers`` steps.

    Reads the owner arrays, the per-node vectors and that part's field files: no other
    part's structure and nothing of the dataset's graph artefacts.
    """
    man = read_shard_manifest(url)
    where = mio.join(url, MANIFEST)
    have = field_layers(man)
    if have is None:
        raise DataError(f"{where}: the shard set has no receptive fields (made by an older version); "
                        "rerun `margo-dist data partition`")
    if have < layers:
        raise ConfigError(f"{where}: the shard set's fields cover {have} propagation step(s), model.n_layers={layers}"
                          " needs more; rerun `margo-dist data partition` with this model.n_layers")
    check_part(man, url, part)
    missing = [m for m in modalities if m not in man["modalities"]]
    if missing:
        raise DataError(f"{where}: the shard set has no modalities {missing} (it has {man['modalities']})")
    owners = load_owners(url)
    nu, ni = int(man["n_users"]), int(man["n_items"])

    def read(rel: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        file_url = mio.join(url, rel)
        try:
            arr = mio.load_npy(file_url)
        except FileNotFoundError as exc:
            raise DataError(f"{file_url}: field file of shard {part} is missing") from exc
        if shape is not None and tuple(arr.shape) != shape:
            raise DataError(f"{file_url}: holds shape {list(arr.shape)}, expected {list(shape)}")
        return arr

    own_u, own_i = np.flatnonzero(owners["user"] == part), np.flatnonzero(owners["item"] == part)
    own = f"part{part}/{FIELD}"
    knn, length = {}, {}
    for m in modalities:
        idx = read(f"{own}/knn_idx_{m}.npy")
        knn[m] = (idx, read(f"{own}/knn_sim_{m}.npy", tuple(idx.shape)))
        if idx.shape[0] != own_i.size:
            raise DataError(f"{mio.join(url, own)}/knn_idx_{m}.npy: {idx.shape[0]} rows for {own_i.size} own items")
        length[m] = read(f"{FIELD}/knn_length_{m}.npy", (ni,))
    nbr = read(f"{own}/user_nbr.npy")
    if nbr.shape[0] != own_u.size:
        raise DataError(f"{mio.join(url, own)}/user_nbr.npy: {nbr.shape[0]} rows for {own_u.size} own users")
    tu = read(f"{own}/train_user.npy")
    return Field(part=part, layers=have, n_users=nu, n_items=ni, own_users=own_u, own_items=own_i,
                 train_user=tu, train_item=read(f"{own}/train_item.npy", tuple(tu.shape)),
                 user_degree=read(f"{FIELD}/user_degree.npy", (nu,)),
                 item_degree=read(f"{FIELD}/item_degree.npy", (ni,)),
                 knn=knn, knn_length=length, user_nbr=nbr, user_cnt=read(f"{own}/user_cnt.npy", tuple(nbr.shape)))


def field_graph(fld: Field, modalities: list[str], mix: dict[str, float]) -> FullGraph:
    """The :class:`FullGraph` over every id whose edges are the field's, with full-graph weights."""
    knn = {m: knn_edges(fld.knn[m][0], rows=fld.own_items, row_length=fld.knn_length[m]) for m in modalities}
    us, ud, uw = user_edges(fld.user_nbr, fld.user_cnt)
    return relation_graph(fld.n_users, fld.n_items, (fld.train_user, fld.train_item),
                          (fld.user_degree, fld.item_degree), knn, mix, (us, fld.own_users[ud], uw))
