"""Offline graph artefacts: training edges and degrees, item kNN graphs, user co-occurrence.

These are the inputs of DRAGON's propagation (docs/equations.md section 1): the bipartite
training graph with its full-graph degrees (so sampled and full forwards normalise
alike), one cosine kNN graph per modality, and the top-k co-interacting users. They
depend only on the training split and the features, so they are built once, cached
under a content key, and loaded by training; model constructors never build them.

Both similarity computations run in row chunks, so memory stays
O(chunk_rows * n_rows) at most, never a dense n x n matrix: item kNN scores a block
against a column chunk at a time (chunk_rows * col_chunk floats), co-occurrence
holds one block's sparse product R[block] @ R.T.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from margo_dist.config import GraphConfig
from margo_dist.data import io as mio
from margo_dist.data.dataset import TRAIN, Dataset, pair_codes, split_pair_codes
from margo_dist.errors import DataError
from margo_dist.precision import resolve as resolve_precision
from margo_dist.progress import progress_bar

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class GraphArtifacts:
    """Everything the encoder needs besides features and parameters."""

    n_users: int
    n_items: int
    train_user: np.ndarray  # int64 [n_edges], deduplicated, sorted by (user, item)
    train_item: np.ndarray  # int64 [n_edges]
    user_degree: np.ndarray  # float32 [n_users], degree in the full training graph
    item_degree: np.ndarray  # float32 [n_items]
    item_knn: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # m -> (idx, sim)
    user_nbr: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))  # -1 padded
    user_cnt: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # 0 padded
    key: str = ""

    @property
    def modalities(self) -> list[str]:
        return list(self.item_knn)


def _row_chunks(n: int, chunk_rows: int, progress: bool, desc: str) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges, with a progress bar when asked (and on a terminal)."""
    if chunk_rows < 1:
        raise DataError(f"chunk_rows={chunk_rows} must be >= 1 (graph.chunk_rows)")
    starts = progress_bar(range(0, n, chunk_rows), (n + chunk_rows - 1) // chunk_rows, desc, progress, "chunk")
    for start in starts:
        yield start, min(start + chunk_rows, n)


def _order_by_value_then_id(val: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by value descending, ties by lower id (two stable sorts)."""
    by_id = torch.sort(idx, dim=1, stable=True).indices
    val, idx = val.gather(1, by_id), idx.gather(1, by_id)
    by_val = torch.sort(val, dim=1, descending=True, stable=True).indices
    return val.gather(1, by_val), idx.gather(1, by_val)


class _UnitRows:
    """Rows of ``x`` scaled to unit length on demand, so no normalised copy of ``x`` is held.

    A zero row stays zero (its cosine with everything is 0). Scaling a slice costs
    rows * dim, against chunk_rows times as much for the products that use it.
    """

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.norm = torch.linalg.vector_norm(x, dim=1).clamp_min(torch.finfo(torch.float32).tiny)[:, None]

    def __len__(self) -> int:
        return self.x.shape[0]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.x[start:stop] / self.norm[start:stop]

    def take(self, ids: torch.Tensor) -> torch.Tensor:
        return self.x[ids] / self.norm[ids]


def _tied_topk(unit: _UnitRows, rows: torch.Tensor, k: int, cols: int, chunk_elems: int = 1 << 24
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of whole similarity rows where the k-th value is tied: lowest ids win.

    Recomputes each row against all items (a few rows at a time, so the masks stay
    near ``chunk_elems`` elements), takes every value above the row's k-th value and
    then the first ids equal to it. Only rows with such a tie come here.
    """
    n = len(unit)
    step = max(1, chunk_elems // max(1, n))
    out_v, out_i = [], []
    for start in range(0, rows.numel(), step):
        r = rows[start:start + step]
        xr = unit.take(r)
        sub = torch.empty((r.numel(), n), dtype=xr.dtype, device=xr.device)
        for c0 in range(0, n, cols):
            torch.mm(xr, unit.rows(c0, min(n, c0 + cols)).T, out=sub[:, c0:c0 + cols])
        sub[torch.arange(r.numel(), device=sub.device), r] = float("-inf")
        kth = torch.topk(sub, k, dim=1).values[:, -1:]
        above = sub > kth
        need = k - above.sum(dim=1, keepdim=True, dtype=torch.int32)
        equal = sub == kth
        rank = equal.to(torch.int32).cumsum(dim=1, dtype=torch.int32)
        idx = (above | (equal & (rank <= need))).nonzero()[:, 1].view(-1, k)
        out_i.append(idx)
        out_v.append(sub.gather(1, idx))
    return torch.cat(out_v), torch.cat(out_i)


def item_knn(features: np.ndarray, k: int, chunk_rows: int = 2048, *, progress: bool = False,
             name: str = "features", device: str | torch.device = "cpu",
             col_chunk: int = 16384, precision: str = "float32", margin: int | None = None,
             stats: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k neighbours of every item, itself excluded.

    Returns (idx int64 [n, k'], sim float32 [n, k']) with k' = min(k, n - 1), rows
    sorted by similarity descending, ties by lower item id. A zero feature row has
    similarity 0 to everything. ``name`` only labels errors and the progress bar.

    Each block of ``chunk_rows`` rows is scored against ``col_chunk`` items at a
    time into one reused buffer, keeping each chunk's best k + 1; the extra candidate
    shows whether the k-th place is tied, and only tied rows are recomputed whole to
    break the tie by id. Memory beyond the features (a float32 copy only if they are
    not float32 already): chunk_rows * col_chunk floats. Similarities can differ in
    the last bit between block sizes (BLAS picks kernels by shape), and so can the
    order of neighbours whose similarities differ only there.

    ``precision="bfloat16"`` (:func:`_bf16_candidates`) finds k + ``margin`` candidates
    per row with bfloat16 products (half the bytes, about twice the speed where bf16 is
    native) and re-scores them in float32; ``stats`` (if given) receives how many rows
    had to be recomputed exactly.
    """
    feats = np.asarray(features)
    if feats.ndim != 2:
        raise DataError(f"{name}: item features must be a 2-d [n_items, dim] array, got shape {feats.shape}")
    if k < 1:
        raise DataError(f"{name}: item kNN needs k >= 1 (graph.item_k), got {k}")
    if col_chunk < 1:
        raise DataError(f"{name}: col_chunk={col_chunk} must be >= 1")
    n = feats.shape[0]
    kk = min(k, max(n - 1, 0))
    if kk == 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
    with warnings.catch_warnings():  # memory-mapped rows are read-only; x is only ever read
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)).to(device)
    check_rows = max(1, (1 << 24) // max(1, x.shape[1]))
    for c0 in range(0, n, check_rows):
        finite = torch.isfinite(x[c0:c0 + check_rows]).all(dim=1)
        if not bool(finite.all()):
            row = c0 + int(torch.nonzero(~finite)[0, 0])
            raise DataError(f"{name}: item row {row} holds a non-finite value (NaN or inf)")
    unit = _UnitRows(x)
    idx_out = np.empty((n, kk), np.int64)
    sim_out = np.empty((n, kk), np.float32)
    cols = min(col_chunk, n)
    if precision == "bfloat16":
        recomputed = 0
        for start, stop, val, idx, redone in _bf16_candidates(unit, kk, chunk_rows, cols, margin, progress, name):
            idx_out[start:stop], sim_out[start:stop] = idx.cpu().numpy(), val.cpu().numpy()
            recomputed += redone
        if stats is not None:
            stats["rows_recomputed"] = recomputed
        return idx_out, sim_out
    if precision != "float32":
        raise DataError(f"{name}: item kNN precision {precision!r} is not float32 or bfloat16 (graph.knn_precision)")
    probe = min(kk + 1, n)  # self is -inf, so it is never the tied (k+1)-th
    buf = torch.empty((min(chunk_rows, n), cols), dtype=torch.float32, device=x.device)
    for start, stop in _row_chunks(n, chunk_rows, progress, f"item kNN {name}"):
        val, idx = _block_top(unit.rows, start, stop, n, buf, probe)
        if probe > kk:
            tied = torch.nonzero(val[:, kk] == val[:, kk - 1]).flatten()
            val, idx = val[:, :kk].clone(), idx[:, :kk].clone()
            if tied.numel():
                val[tied], idx[tied] = _tied_topk(unit, tied + start, kk, cols)
        val, idx = _order_by_value_then_id(val, idx)
        idx_out[start:stop] = idx.cpu().numpy()
        sim_out[start:stop] = val.cpu().numpy()
    return idx_out, sim_out


def _block_top(rows: Callable[[int, int], torch.Tensor], start: int, stop: int, n: int, buf: torch.Tensor,
               probe: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``probe`` best (similarity, id) of rows start..stop-1 against every item, self
    excluded: the block is scored against ``buf.shape[1]`` items at a time into ``buf``
    (whose dtype is the products'), keeping each slice's best ``probe``."""
    cols = buf.shape[1]
    cand_v, cand_i = [], []
    for c0 in range(0, n, cols):
        c1 = min(n, c0 + cols)
        sims = buf[:stop - start, :c1 - c0]
        torch.mm(rows(start, stop), rows(c0, c1).T, out=sims)
        lo, hi = max(start, c0), min(stop, c1)
        if lo < hi:
            diag = torch.arange(lo, hi, device=sims.device)
            sims[diag - start, diag - c0] = float("-inf")
        v, i = torch.topk(sims, min(probe, c1 - c0), dim=1)
        cand_v.append(v)
        cand_i.append(i + c0)
    val, pos = torch.topk(torch.cat(cand_v, 1), probe, dim=1)
    return val, torch.cat(cand_i, 1).gather(1, pos)


def _bf16_candidates(unit: _UnitRows, k: int, chunk_rows: int, cols: int, margin: int | None, progress: bool,
                     name: str) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor, int]]:
    """Item kNN from bfloat16 products with an exact float32 re-rank, block by block:
    (start, stop, similarities, ids, rows recomputed) per block of rows.

    Each row's k + margin best candidates by the bf16 similarity are re-scored in float32
    and ordered by value, ties by lower id. bf16 keeps 8 bits of mantissa, so a candidate
    list can miss a true neighbour only if the bf16 error outranks ``margin`` places; the
    rows where that cannot be ruled out cheaply -- the last candidate made the top k, or
    the k-th value is tied with the next -- are recomputed exactly (``_tied_topk``), so
    the lists equal the float32 ones up to the last bit of a similarity.
    """
    n = len(unit)
    margin = max(k, 8) if margin is None else margin
    probe = min(k + margin, n - 1)  # candidates per row; self is -inf and never one
    low = torch.empty((n, unit.x.shape[1]), dtype=torch.bfloat16, device=unit.x.device)
    for c0 in range(0, n, chunk_rows):
        low[c0:c0 + chunk_rows] = unit.rows(c0, min(n, c0 + chunk_rows))
    buf = torch.empty((min(chunk_rows, n), cols), dtype=torch.bfloat16, device=unit.x.device)
    for start, stop in _row_chunks(n, chunk_rows, progress, f"item kNN {name} (bf16)"):
        cand = _block_top(lambda a, b: low[a:b], start, stop, n, buf, probe)[1]  # [rows, probe], best bf16 first
        val, idx = _order_by_value_then_id(_exact_scores(unit, start, stop, cand), cand)
        doubtful = torch.zeros(stop - start, dtype=torch.bool, device=cand.device)
        if probe < n - 1:  # candidates outside the list exist
            doubtful = (idx[:, :k] == cand[:, -1:]).any(dim=1)
            if probe > k:
                doubtful |= val[:, k] == val[:, k - 1]
        val, idx = val[:, :k].clone(), idx[:, :k].clone()
        rows = torch.nonzero(doubtful).flatten()
        if rows.numel():
            val[rows], idx[rows] = _tied_topk(unit, rows + start, k, cols)
            val, idx = _order_by_value_then_id(val, idx)
        yield start, stop, val, idx, int(rows.numel())


def _exact_scores(unit: _UnitRows, start: int, stop: int, cand: torch.Tensor, chunk_elems: int = 1 << 24
                  ) -> torch.Tensor:
    """float32 cosine of rows start..stop-1 with their candidates ``cand`` [rows, c].

    The candidates' raw rows are gathered into one reused buffer (a fresh tensor per
    gather costs more in page faults than the gather itself) and the dot products are
    divided by the norms afterwards.
    """
    c, d = cand.shape[1], unit.x.shape[1]
    step = max(1, chunk_elems // max(1, c * d))
    gathered = torch.empty((min(step, stop - start) * c, d), dtype=unit.x.dtype, device=cand.device)
    out = torch.empty(cand.shape, dtype=torch.float32, device=cand.device)
    for r0 in range(0, stop - start, step):
        r1 = min(stop - start, r0 + step)
        ids = cand[r0:r1].flatten()
        rows = gathered[:ids.numel()]
        torch.index_select(unit.x, 0, ids, out=rows)
        for r in range(r1 - r0):  # one matrix-vector product a row: faster here than bmm's [c, d] x [d, 1]
            torch.mv(rows[r * c:(r + 1) * c], unit.x[start + r0 + r], out=out[r0 + r])
        out[r0:r1] /= unit.norm[ids].view(r1 - r0, c) * unit.norm[start + r0:start + r1]
    return out


def dedup_pairs(user: np.ndarray, item: np.ndarray, n_users: int, n_items: int, where: str,
                row_ids: np.ndarray | None = None, names: tuple[str, str] = ("user", "item"),
                cell: str = "row {row} field {field}") -> tuple[np.ndarray, np.ndarray]:
    """Unique (user, item) pairs sorted by (user, item); ids checked against the sizes.

    ``row_ids`` maps positions to the rows named in errors (a split's rows in its dataset);
    ``names`` and ``cell`` (a format of ``row`` and ``field``) word the bad entry in the
    caller's terms.
    """
    user = np.asarray(user, dtype=np.int64)
    item = np.asarray(item, dtype=np.int64)
    if user.shape != item.shape or user.ndim != 1:
        raise DataError(f"{where}: {names[0]} and {names[1]} arrays must be 1-d and aligned, "
                        f"got {user.shape} and {item.shape}")
    for field_name, ids, n in ((names[0], user, n_users), (names[1], item, n_items)):
        bad = np.flatnonzero((ids < 0) | (ids >= n))
        if bad.size:
            row = int(bad[0]) if row_ids is None else int(row_ids[bad[0]])
            raise DataError(f"{where}: {cell.format(row=row, field=field_name)}={int(ids[bad[0]])} "
                            f"is outside [0, {n})")
    return split_pair_codes(np.unique(pair_codes(user, item, n_items)), n_items)


def _row_value_col_order(rows: np.ndarray, values: np.ndarray, cols: np.ndarray, n_rows: int) -> np.ndarray:
    """Order of entries by (row, -value, col): one int64 key sort for integer values when it fits, else lexsort.

    (row, col) pairs are unique, so the key is unique and sort stability does not matter;
    the single key sorts several times faster than a three-key lexsort.
    """
    if rows.size == 0:
        return np.zeros(0, np.int64)
    if np.issubdtype(values.dtype, np.integer):
        top, n_cols = int(values.max()), int(cols.max()) + 1
        if top >= 0 and int(values.min()) >= 0 and n_rows * (top + 1) * n_cols < 2**62:
            key = (rows * (top + 1) + (top - values)) * n_cols + cols
            return np.argsort(key)
    return np.lexsort((cols, -values, rows))


def fill_ranked(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, idx_out: np.ndarray,
                val_out: np.ndarray) -> None:
    """Write each row's entries into padded [n_rows, width] tables, by value descending then lower column.

    ``idx_out``/``val_out`` hold the padding already (-1 / 0); entries past a row's
    ``width`` are dropped. (row, col) pairs must be unique. The one ranking behind the
    co-occurrence tables and the ones rebuilt from shards, so both agree entry for entry.
    """
    n_rows, width = idx_out.shape
    order = _row_value_col_order(rows, values, cols, n_rows)
    rows, cols, values = rows[order], cols[order], values[order]
    row_start = np.zeros(n_rows + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=row_start[1:])
    rank = np.arange(rows.size, dtype=np.int64) - row_start[rows]
    top = rank < width
    idx_out[rows[top], rank[top]] = cols[top]
    val_out[rows[top], rank[top]] = values[top]


def present_knn(features: np.ndarray, present: np.ndarray, k: int, chunk_rows: int = 2048, **kwargs: Any
                ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`item_knn` among the items that have the modality: a missing item (a zero row)
    links to none and none links to it; its rows are -1 padding, like a short list's."""
    if present.all():
        return item_knn(features, k, chunk_rows, **kwargs)
    ids = np.flatnonzero(present)
    n = len(present)
    width = min(k, max(n - 1, 0))
    idx = np.full((n, width), -1, np.int64)
    sim = np.zeros((n, width), np.float32)
    sub_idx, sub_sim = item_knn(np.asarray(features)[ids], k, chunk_rows, **kwargs)
    idx[ids, :sub_idx.shape[1]] = ids[sub_idx]
    sim[ids, :sub_sim.shape[1]] = sub_sim
    return idx, sim


def padded_edges(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(neighbour, row, valid mask) of a -1 padded neighbour table: one edge per non-padding entry.

    Edges come row by row, in column order, so ``values[valid]`` lines up with them.
    """
    valid = idx >= 0
    rows = np.repeat(np.arange(idx.shape[0], dtype=np.int64), valid.sum(axis=1))
    return idx[valid].astype(np.int64), rows, valid


def user_cooccurrence(user: np.ndarray, item: np.ndarray, n_users: int, n_items: int, k: int,
                      chunk_rows: int = 4096, *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Top-k other users of each user by number of shared items, with those counts.

    Returns (nbr int64 [n_users, k], cnt float32 [n_users, k]): ordered by count
    descending, ties by lower user id; users with fewer than k co-users are padded
    with -1 / 0 (docs/equations.md 1.6: no random repetition).
    """
    if k < 1:
        raise DataError(f"user co-occurrence needs k >= 1 (graph.user_k), got {k}")
    u, i = dedup_pairs(user, item, n_users, n_items, "user co-occurrence interactions")
    r = sp.csr_matrix((np.ones(u.size, np.int32), (u, i)), shape=(n_users, n_items))
    rt = r.T.tocsr()
    nbr = np.full((n_users, k), -1, np.int64)
    cnt = np.zeros((n_users, k), np.float32)
    for start, stop in _row_chunks(n_users, chunk_rows, progress, "user co-occurrence"):
        co = (r[start:stop] @ rt).tocsr()
        rows = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(co.indptr))
        cols = co.indices.astype(np.int64)
        counts = co.data.astype(np.int64)
        keep = (cols != rows + start) & (counts > 0)
        fill_ranked(rows[keep], cols[keep], counts[keep], nbr[start:stop], cnt[start:stop])
    return nbr, cnt


def check_modalities(ds: Dataset, modalities: list[str] | None) -> list[str]:
    """The modalities to build graphs for (all of ``ds``'s when None), each a feature of ``ds``, once."""
    mods = list(ds.modalities if modalities is None else modalities)
    if not mods:
        raise DataError(f"dataset {ds.name!r}: no modality to build item kNN graphs from")
    for m in mods:
        if m not in ds.features:
            raise DataError(f"dataset {ds.name!r}: modality {m!r} not among its features {ds.modalities}")
    if len(set(mods)) != len(mods):
        raise DataError(f"dataset {ds.name!r}: modality list {mods} repeats a name")
    return mods


def graph_key(ds: Dataset, cfg: GraphConfig, modalities: list[str]) -> str:
    """Short content key: dataset fingerprint + the parameters that change the result.

    chunk_rows and cache_dir only change how and where it is computed, so they are left out.
    """
    params: dict[str, object] = {"version": FORMAT_VERSION, "item_k": int(cfg.item_k), "user_k": int(cfg.user_k),
                                 "modalities": sorted(modalities)}
    missing = {m: ds.presence(m) for m in modalities if not ds.presence(m).all()}
    if missing:  # the kNN graphs link present items only: the missing pairs are part of the key
        params["missing"] = {m: hashlib.blake2b(np.packbits(v).tobytes(), digest_size=8).hexdigest()
                             for m, v in sorted(missing.items())}
    knn_precision = resolve_precision(cfg.knn_precision, "cpu", "graph.knn_precision")[0]
    if knn_precision != "float32":  # float32 keys stay what they were before the key existed
        params["knn_precision"] = knn_precision
    h = hashlib.blake2b(digest_size=8)
    h.update(ds.fingerprint().encode())
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()


def build_graphs(ds: Dataset, cfg: GraphConfig, modalities: list[str] | None = None,
                 progress: bool = False) -> GraphArtifacts:
    """Build every artefact from the training split (label 0, duplicates dropped)."""
    mods = check_modalities(ds, modalities)
    for m in mods:
        rows = np.asarray(ds.features[m]).shape[0]
        if rows != ds.n_items:
            raise DataError(f"dataset {ds.name!r}: features[{m!r}] has {rows} rows but n_items={ds.n_items}")
    rows = np.flatnonzero(np.asarray(ds.label) == TRAIN)
    u, i = dedup_pairs(np.asarray(ds.user)[rows], np.asarray(ds.item)[rows], ds.n_users, ds.n_items,
                        f"dataset {ds.name!r} interactions", row_ids=rows)
    precision, why = resolve_precision(cfg.knn_precision, "cpu", "graph.knn_precision")
    knn = {}
    for m in mods:
        stats: dict[str, int] = {}
        knn[m] = present_knn(ds.features[m], ds.presence(m), cfg.item_k, cfg.chunk_rows, progress=progress,
                             name=m, precision=precision, stats=stats)
        if precision != "float32" and progress:
            print(f"item kNN {m}: bfloat16 candidates ({why}), float32 re-rank; {stats['rows_recomputed']} of "
                  f"{ds.n_items} rows recomputed exactly", flush=True)
    nbr, cnt = user_cooccurrence(u, i, ds.n_users, ds.n_items, cfg.user_k, cfg.chunk_rows, progress=progress)
    return GraphArtifacts(
        n_users=ds.n_users, n_items=ds.n_items, train_user=u, train_item=i,
        user_degree=np.bincount(u, minlength=ds.n_users).astype(np.float32),
        item_degree=np.bincount(i, minlength=ds.n_items).astype(np.float32),
        item_knn=knn, user_nbr=nbr, user_cnt=cnt, key=graph_key(ds, cfg, mods))


def _arrays(art: GraphArtifacts) -> dict[str, np.ndarray]:
    """File stem -> array; kNN files are numbered in the manifest's modality order."""
    out = {"train_user": art.train_user, "train_item": art.train_item, "user_degree": art.user_degree,
           "item_degree": art.item_degree, "user_nbr": art.user_nbr, "user_cnt": art.user_cnt}
    for j, m in enumerate(art.item_knn):
        out[f"knn{j}_idx"], out[f"knn{j}_sim"] = art.item_knn[m]
    return out


_DTYPES = {"train_user": "int64", "train_item": "int64", "user_degree": "float32", "item_degree": "float32",
           "user_nbr": "int64", "user_cnt": "float32"}


def _expected(stem: str) -> str:
    if stem in _DTYPES:
        return _DTYPES[stem]
    return "int64" if stem.endswith("_idx") else "float32"


def _read_manifest(url: str) -> dict:
    path = mio.join(url, MANIFEST)
    try:
        with mio.open_url(path, "rt") as fh:
            return json.load(fh)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: graph manifest not found") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


def save_graphs(art: GraphArtifacts, url: str) -> None:
    """Write the artefacts under ``url`` (folder of .npy + manifest.json), atomically.

    Everything goes to a temporary sibling folder, renamed onto ``url`` at the end,
    so a reader sees either no cache or a complete one. If ``url`` already holds a
    complete cache with the same key, that one is kept (same key, same content).
    """
    arrays = _arrays(art)
    manifest = {"format_version": FORMAT_VERSION, "key": art.key, "n_users": int(art.n_users),
                "n_items": int(art.n_items), "modalities": art.modalities,
                "arrays": {s: {"dtype": str(a.dtype), "shape": list(a.shape)} for s, a in arrays.items()}}
    with mio.staging_dir(url, keep_existing=lambda dest: _holds_key(dest, art.key)) as tmp:
        for stem, arr in arrays.items():
            with mio.open_url(mio.join(tmp, f"{stem}.npy"), "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
        with mio.open_url(mio.join(tmp, MANIFEST), "w") as fh:
            json.dump(manifest, fh, indent=1)


def _holds_key(url: str, key: str) -> bool:
    """Whether ``url`` already holds a complete cache of ``key`` (same key, same content)."""
    if not key or not mio.exists(mio.join(url, MANIFEST)):
        return False
    try:
        return _read_manifest(url).get("key") == key
    except DataError:
        return False


def load_graphs(url: str) -> GraphArtifacts:
    """Read artefacts written by ``save_graphs``, checking every array against the manifest."""
    man = _read_manifest(url)
    where = mio.join(url, MANIFEST)
    if man.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{where}: format_version={man.get('format_version')!r}, this code reads "
                        f"{FORMAT_VERSION}; rebuild with `margo-dist data graphs`")
    try:
        n_users, n_items = int(man["n_users"]), int(man["n_items"])
        modalities, specs, key = list(man["modalities"]), dict(man["arrays"]), str(man["key"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: missing or malformed field {exc}") from exc
    stems = list(_DTYPES) + [f"knn{j}_{p}" for j in range(len(modalities)) for p in ("idx", "sim")]
    arrays: dict[str, np.ndarray] = {}
    for stem in stems:
        file_url = mio.join(url, f"{stem}.npy")
        if stem not in specs:
            raise DataError(f"{where}: field arrays.{stem} missing")
        arr = mio.load_npy(file_url)
        want_shape, want_dtype = list(specs[stem]["shape"]), _expected(stem)
        if list(arr.shape) != want_shape or str(arr.dtype) != want_dtype:
            raise DataError(f"{file_url}: holds {arr.dtype}{list(arr.shape)}, "
                            f"manifest and format expect {want_dtype}{want_shape}")
        arrays[stem] = arr
    sizes = {"user_degree": (n_users,), "item_degree": (n_items,)}
    for stem, shape in sizes.items():
        if arrays[stem].shape != shape:
            raise DataError(f"{mio.join(url, stem + '.npy')}: shape {arrays[stem].shape}, expected {shape}")
    for stem, n in (("user_nbr", n_users), ("user_cnt", n_users)) + tuple(
            (f"knn{j}_{p}", n_items) for j in range(len(modalities)) for p in ("idx", "sim")):
        if arrays[stem].ndim != 2 or arrays[stem].shape[0] != n:
            raise DataError(f"{mio.join(url, stem + '.npy')}: shape {arrays[stem].shape}, expected ({n}, k)")
    return GraphArtifacts(
        n_users=n_users, n_items=n_items, train_user=arrays["train_user"], train_item=arrays["train_item"],
        user_degree=arrays["user_degree"], item_degree=arrays["item_degree"],
        item_knn={m: (arrays[f"knn{j}_idx"], arrays[f"knn{j}_sim"]) for j, m in enumerate(modalities)},
        user_nbr=arrays["user_nbr"], user_cnt=arrays["user_cnt"], key=key)


def cache_base(ds_url: str, cfg: GraphConfig) -> str:
    """Where a dataset's offline artefacts go: ``graph.cache_dir`` or ``<dataset>/.margo_cache``."""
    return cfg.cache_dir or mio.join(ds_url, ".margo_cache")


def graphs_dir(ds_url: str, cfg: GraphConfig, key: str) -> str:
    """Cache folder of one key: ``<cache base>/graphs-<key>``."""
    return mio.join(cache_base(ds_url, cfg), f"graphs-{key}")


def shards_dir(ds_url: str, cfg: GraphConfig, key: str, method: str, parts: int) -> str:
    """Default folder of a shard set: ``<cache base>/shards-<key>-<method>-<parts>``."""
    return mio.join(cache_base(ds_url, cfg), f"shards-{key}-{method}-{parts}")


def ensure_graphs(ds: Dataset, ds_url: str, cfg: GraphConfig, modalities: list[str] | None = None,
                  build: bool = True, progress: bool = False) -> GraphArtifacts:
    """The cached artefacts for ``ds``; built and saved when missing and ``build`` is set."""
    mods = check_modalities(ds, modalities)
    key = graph_key(ds, cfg, mods)
    folder = graphs_dir(ds_url, cfg, key)
    if mio.exists(mio.join(folder, MANIFEST)):
        art = load_graphs(folder)
        if art.key != key:
            raise DataError(f"{mio.join(folder, MANIFEST)}: key={art.key!r} but the folder is named for {key!r}; "
                            "remove the folder and run `margo-dist data graphs`")
        if sorted(art.modalities) != sorted(mods):
            raise DataError(f"{mio.join(folder, MANIFEST)}: modalities {art.modalities} differ from the "
                            f"requested {mods}; remove the folder and run `margo-dist data graphs`")
        return art
    if not build:
        raise DataError(f"graph artefacts for dataset {ds_url!r} (key {key}, item_k={cfg.item_k}, "
                        f"user_k={cfg.user_k}, modalities {mods}) are not at {folder}; "
                        "run `margo-dist data graphs` first")
    art = build_graphs(ds, cfg, mods, progress=progress)
    save_graphs(art, folder)
    return art

