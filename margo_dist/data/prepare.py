"""Raw interactions and item side files -> a dataset folder (MMRec or Parquet layout).

The steps, in order (each one is vectorised over rows):

1. read the interaction file: CSV, TSV or JSON lines, optionally compressed (.gz,
   .bz2, .xz: fsspec infers it from the suffix). The format comes from the suffix
   (.csv, .tsv/.tab, .jsonl/.json/.ndjson) or, for any other suffix (.inter, .txt, ...),
   from the first line (``{`` -> JSON lines, a tab -> TSV, a comma -> CSV);
2. duplicate (user, item) pairs: the latest by timestamp is kept (file order breaks
   ties and stands in for time when there is no timestamp column);
3. ``min_rating``: only ratings >= the threshold are kept (after step 2, so a user's
   latest rating of an item decides);
4. k-core: users and items with fewer than ``k_core`` interactions are dropped,
   repeatedly, until none is left to drop;
5. dense ids 0..n-1 in raw-id order (numeric order when every raw id is an
   integer, else string order), recorded in ``user_map.tsv`` / ``item_map.tsv``;
6. per-user random split (:func:`split_per_user`);
7. features: ``text`` from the item file (one sentence per item, encoded by
   :mod:`margo_dist.data.text_encoder`) and ``image`` from a precomputed table.

Column names: ``columns`` maps ``user``/``item``/``rating``/``timestamp`` to header
names; otherwise the usual names are recognised (user, user_id, userID, reviewerID;
item, item_id, itemID, asin, movie_id; rating, overall; timestamp, unixReviewTime).
RecBole headers (``user_id:token``) are matched by the part before the colon.

Image features are one Parquet file with columns ``item_id`` (the raw item id,
string or integer) and ``feature`` (list<float> or fixed_size_list<float>, the same
length in every row). Items without a row get a zero vector (and a note).

The public Amazon dumps (2014, 2018 and 2023 reviews and metadata, McAuley's ``.b``
image features) are recognised from their records and read by
:mod:`margo_dist.data.dumps` (unless ``columns`` is given, which keeps the generic
reader). When any input is such a dump, the dataset records which (item, modality)
pairs had a feature (``Dataset.present``), the log counts the missing ones, and an
item missing every modality is an error naming it.

Everything is computed before anything is written; ``write_dataset`` writes the
folder atomically, so a failure leaves no output folder behind. Memory stays bounded
at category scale: the review file is parsed by Arrow into four columns (no Python
object per review) and McAuley's image rows go to a scratch file beside the output
as they are read (``benchmarks/bench_prepare.py`` measures both; docs/amazon.md).
"""

from __future__ import annotations

import os
import posixpath
import sys
import tempfile
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from margo_dist.data import dumps
from margo_dist.data import io as dio
from margo_dist.data.dataset import SPLIT_NAMES, Dataset
from margo_dist.data.formats import FEAT_SUFFIX, parquet_feature_matrix, read_parquet_columns
from margo_dist.data.raw import (COLUMN_KEYS, COMPRESSION_SUFFIXES, Table, base_name, find_column, float_column,
                                 id_codes, id_column, one_chunk, read_table)
from margo_dist.errors import ConfigError, DataError

USER_MAP, ITEM_MAP = "user_map.tsv", "item_map.tsv"


# ---------------------------------------------------------------- split


def split_per_user(user: np.ndarray, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> np.ndarray:
    """Label every interaction 0 (train), 1 (valid) or 2 (test), per user at random.

    Each user's interactions are shuffled (numpy ``Generator(seed)``, one random key
    per row, so the result depends on the row order given); the valid and test
    counts are ``round(ratio * n)`` (halves round up), at least 1 each when n >= 3,
    and train takes the rest, never fewer than 1. Returns int8 labels aligned with
    ``user``.
    """
    r = _check_ratios(ratios)
    user = np.asarray(user)
    n = len(user)
    if n == 0:
        return np.zeros(0, dtype=np.int8)
    group, counts = dense_groups(user)
    key = np.random.default_rng(seed).random(n)
    order = _by_group_then_key(group, key)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    g = group[order]
    rank = np.arange(n) - starts[g]
    n_valid, n_test = _split_counts(counts, r)
    n_train = counts - n_valid - n_test
    sorted_label = np.where(rank < n_train[g], 0, np.where(rank < (n_train + n_valid)[g], 1, 2))
    label = np.empty(n, dtype=np.int8)
    label[order] = sorted_label
    return label


def _by_group_then_key(group: np.ndarray, key: np.ndarray) -> np.ndarray:
    """``np.lexsort((key, group))`` for keys in [0, 1), in linear time: radix passes on the
    group and the key's top 16 bits, then the few rows whose group and top bits tie (about
    one pair in 65,536 within a group) are ordered by the whole key."""
    top = (key * 65536).astype(np.uint16)  # floor(key * 2^16): exact, and monotone in key
    order = stable_order(top, group)
    g, t = group[order], top[order]
    tie = (g[1:] == g[:-1]) & (t[1:] == t[:-1])  # position p ties with p + 1
    if tie.any():
        in_run = np.zeros(len(order), dtype=bool)
        in_run[1:] |= tie
        in_run[:-1] |= tie
        pos = np.flatnonzero(in_run)
        run = np.cumsum(np.append(True, ~tie[pos[1:] - 1]))  # a new run where p does not tie with p - 1
        rows = order[pos]
        order[pos] = rows[np.lexsort((key[rows], run))]  # stable: equal keys stay in row order
    return order


def _check_ratios(ratios: Sequence[float]) -> np.ndarray:
    r = np.asarray(ratios, dtype=np.float64).reshape(-1)
    if r.shape != (3,) or not np.all(np.isfinite(r)) or np.any(r < 0) or r[0] <= 0:
        raise ConfigError(f"split ratios {tuple(ratios)}: expected three non-negative numbers "
                          "(train, valid, test) with train > 0")
    return r / r.sum()


def _split_counts(counts: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-user (valid, test) sizes; see :func:`split_per_user`."""
    n_valid = np.floor(r[1] * counts + 0.5 + 1e-9).astype(np.int64)
    n_test = np.floor(r[2] * counts + 0.5 + 1e-9).astype(np.int64)
    big = counts >= 3
    if r[1] > 0:
        n_valid = np.where(big, np.maximum(n_valid, 1), n_valid)
    if r[2] > 0:
        n_test = np.where(big, np.maximum(n_test, 1), n_test)
    n_test = np.minimum(n_test, counts - 1)
    n_valid = np.minimum(n_valid, counts - 1 - n_test)
    return n_valid, n_test


# ---------------------------------------------------------------- ordering
# Each of prepare's orderings is linear in rows: at 10x Electronics (16.9 million reviews)
# np.lexsort's comparison sorts took 13-15x their 1x time (n log n, and cache misses)


RADIX_BITS = 16  # numpy's stable sort of a uint16 array is a radix (counting) sort


def stable_order(*keys: np.ndarray) -> np.ndarray:
    """Indices that sort rows by ``keys`` as ``np.lexsort(keys)`` does (the last key is the
    primary one; equal rows keep their order), for non-negative integer keys.

    Least-significant-digit radix sort: per key (first to last), one pass per 16 bits of its
    largest value, each a stable counting sort of that digit. Time is linear in rows.
    """
    n = len(keys[0]) if keys else 0
    order: np.ndarray | None = None  # int32 while it can be: half the memory traffic of each gather
    for key in keys:
        key = np.asarray(key)
        if len(key) != n:
            raise ValueError(f"stable_order: keys of {len(key)} and {n} rows")
        if n == 0:
            continue
        if key.dtype.kind not in "iu" or (key.dtype.kind == "i" and int(key.min()) < 0):
            raise ValueError(f"stable_order: keys must be non-negative integers, not {key.dtype} "
                             f"with minimum {key.min()}")
        top, shift = int(key.max()), 0
        while True:
            digit = ((key >> shift) & 0xFFFF).astype(np.uint16)  # in row order; the key's own dtype
            if order is None:
                order = np.argsort(digit, kind="stable").astype(np.int32 if n < 2**31 else np.int64)
            else:
                order = order[np.argsort(digit[order], kind="stable")]
            shift += RADIX_BITS
            if top >> shift == 0:
                break
    return np.arange(n, dtype=np.int64) if order is None else order.astype(np.int64)


def dense_groups(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's group (0..g-1, in the order of the codes' values) and each group's size,
    like ``np.unique(codes, return_inverse=True, return_counts=True)[1:]``; linear in rows
    for non-negative integer codes no larger than the rows (prepare's dense ids)."""
    codes = np.asarray(codes).reshape(-1)
    if codes.dtype.kind not in "iu" or len(codes) == 0 or int(codes.min()) < 0 or int(codes.max()) > len(codes):
        _, group, counts = np.unique(codes, return_inverse=True, return_counts=True)
        return group.reshape(-1), counts
    _, group, counts = dense_ids(codes, int(codes.max()) + 1)
    return group, counts


def dense_ids(codes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The codes (in ``0..n-1``) that occur, ascending; each row's position among them; and
    how many rows each has: ``np.unique`` and ``np.searchsorted`` by counting."""
    full = np.bincount(codes, minlength=n)
    used = np.flatnonzero(full)
    remap = np.zeros(n, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return used, remap[codes], full[used]


# ---------------------------------------------------------------- filtering


def k_core_mask(user: np.ndarray, item: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Mask of the interactions in the k-core, and how many passes dropped something.

    ``user``/``item`` are non-negative integer codes. A pass drops every row whose
    user or item has fewer than ``k`` rows left; passes repeat until one drops nothing.
    """
    keep = np.ones(len(user), dtype=bool)
    if k <= 1 or len(user) == 0:
        return keep, 0
    n_u = int(user.max()) + 1
    n_i = int(item.max()) + 1
    idx = np.arange(len(user))
    passes = 0
    while len(idx):
        u, i = user[idx], item[idx]
        ok = (np.bincount(u, minlength=n_u)[u] >= k) & (np.bincount(i, minlength=n_i)[i] >= k)
        if ok.all():
            break
        passes += 1
        idx = idx[ok]
    keep[:] = False
    keep[idx] = True
    return keep, passes


def _latest_per_pair(u: np.ndarray, i: np.ndarray, ts: np.ndarray | None) -> np.ndarray:
    """Row indices that keep one row per (user, item): the latest by ``ts`` (finite), then the
    last in the file. They come in (user, item) order, the order the dataset is written in."""
    n = len(u)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = stable_order(i, u)  # by pair; file order within one
    su, si = u[order], i[order]
    first = np.ones(n, dtype=bool)
    first[1:] = (su[1:] != su[:-1]) | (si[1:] != si[:-1])
    if ts is None:
        pick = np.flatnonzero(np.append(first[1:], True))  # each pair's last row
    else:
        t = ts[order]
        pair = np.cumsum(first) - 1
        latest = np.maximum.reduceat(t, np.flatnonzero(first))
        tied = np.flatnonzero(t == latest[pair])  # each pair's rows at its latest time
        p = pair[tied]
        pick = tied[np.append(p[1:] != p[:-1], True)]  # the last of them
    return order[pick]


# ---------------------------------------------------------------- features


def _item_texts(table: Table, item_raw: np.ndarray, text_fields: list[str] | None, columns: dict | None,
                notes: list[str]) -> list[str]:
    """One sentence per dense item: the chosen fields joined by '. '; '' where there is none."""
    url = table.url
    named = (columns or {}).get("item")
    # the interaction file's item column name applies here only when this file has it too
    use = columns if named is not None and any(h == named or base_name(h) == named for h in table.header) else None
    id_col = find_column(table.header, "item", url, use, required=True)
    if text_fields is None:
        fields = [h for h in table.header if h != id_col and table.textual.get(h)]
        if not fields:
            raise DataError(f"{url}: no text column besides the id column {id_col!r}; columns found: "
                            f"{table.header}; name them with text_fields")
    else:
        fields = []
        for f in text_fields:
            match = [h for h in table.header if h == f or base_name(h) == f]
            if not match:
                raise DataError(f"{url}: text field {f!r} is not a column; columns found: {table.header}")
            fields.append(match[0])
    ids = np.asarray(id_column(table, id_col).to_numpy(zero_copy_only=False)).astype(str)
    values = [[(v or "").strip() for v in table.columns[f].to_pylist()] for f in fields]
    sentences: dict[str, str] = {}
    dup = 0
    for row, raw_id in enumerate(ids):
        if raw_id in sentences:
            dup += 1
            continue
        sentences[raw_id] = ". ".join(v[row] for v in values if v[row])
    if dup:
        notes.append(f"{url}: {dup} rows repeat an item id already seen; the first row of each id is used")
    texts = [sentences.get(r, "") for r in item_raw]
    missing = sum(1 for t in texts if not t)
    if missing:
        notes.append(f"{url}: {missing} of {len(texts)} items have no text; their text feature is a zero vector")
    return texts


def _image_features(url: str, item_raw: np.ndarray, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the Parquet table (item_id, feature) in dense item order (absent items are zero), and
    which items had a row."""
    table = read_parquet_columns(url, ["item_id", "feature"])
    ids_arr = one_chunk(table.column("item_id"))
    if ids_arr.null_count:
        idx = int(np.flatnonzero(ids_arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{url} row {idx + 1}, field item_id: missing value")
    ids = np.asarray(pc.cast(ids_arr, pa.string()).to_numpy(zero_copy_only=False)).astype(str)
    matrix = parquet_feature_matrix(table.column("feature"), url,
                                    lambda idx: f"{url} row {idx + 1} (item {ids[idx]})", fixed_size=False)
    dim = matrix.shape[1]
    if dim == 0:
        raise DataError(f"{url}: field feature: no rows or empty vectors")
    matrix = matrix.astype(np.float32, copy=False)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        idx = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{url} row {idx + 1} (item {ids[idx]}), field feature: non-finite value")
    uniq, first = np.unique(ids, return_index=True)
    if len(uniq) != len(ids):
        notes.append(f"{url}: {len(ids) - len(uniq)} rows repeat an item id; the first row of each id is used")
    pos = np.searchsorted(uniq, item_raw)
    pos_c = np.minimum(pos, max(len(uniq) - 1, 0))
    found = (pos < len(uniq)) & (uniq[pos_c] == item_raw)
    out = np.zeros((len(item_raw), dim), dtype=np.float32)
    out[found] = matrix[first[pos_c[found]]]
    if not found.all():
        notes.append(f"{url}: {int((~found).sum())} of {len(item_raw)} items have no image feature; "
                     "their image feature is a zero vector")
    return out, found


def _dump_texts(url: str, layout: dumps.MetaLayout, item_ids: np.ndarray, groups: dict[str, list[str] | None],
                notes: list[str]) -> dict[str, list[str]]:
    """Item texts from an Amazon metadata dump, with what was skipped in ``notes``."""
    got = dumps.read_item_texts(url, layout, item_ids, groups)
    notes.append(f"{url}: {layout.name}, {got.records} records")
    if got.skipped:
        notes.append(f"{url}: {len(got.skipped)} lines skipped, neither JSON nor a Python dict literal (first: "
                     f"line {got.skipped[0]}); none was run")
    if got.without_id:
        notes.append(f"{url}: {got.without_id} records without {layout.key!r} skipped")
    if got.repeated:
        notes.append(f"{url}: {got.repeated} records repeat an item already read; the first of each is used")
    return got.texts


def _check_present(present: dict[str, np.ndarray], item_ids: np.ndarray, urls: list[str],
                   say: Callable[[str], None]) -> None:
    """Log the missing (item, modality) counts; an item missing every modality is an error naming it."""
    n = len(item_ids)
    say("missing (zero vectors, recorded in <modality>_present): "
        + ", ".join(f"{mod} {int((~mask).sum())} of {n} items" for mod, mask in present.items()))
    lacking = np.flatnonzero(~np.logical_or.reduce(list(present.values())))
    if len(lacking):
        shown = ", ".join(item_ids[lacking[:5]]) + (", ..." if len(lacking) > 5 else "")
        raise DataError(f"{', '.join(urls)}: {len(lacking)} items in the k-core have no feature in any modality "
                        f"(items {shown}); each needs an image row or a text")


def _mapping_file(raw: np.ndarray, url: str, what: str) -> bytes:
    """``raw_id<TAB>id`` lines (header first); an id that would break the TSV is an error."""
    for r in raw:
        if "\t" in r or "\n" in r or "\r" in r:
            raise DataError(f"{url}: {what} id {r!r} contains a tab or line break; it cannot be recorded")
    lines = ["raw_id\tid"] + [f"{r}\t{i}" for i, r in enumerate(raw)]
    return ("\n".join(lines) + "\n").encode("utf-8")


# ---------------------------------------------------------------- the step


def _scratch_parent(out_url: str) -> str | None:
    """The local folder beside the output (same disk) for scratch files; None: the system's temp folder."""
    fs, path = dio.fs_and_path(out_url)
    if not dio.is_local(fs):
        return None
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return parent


def raw_id_array(raw: dict[int, str], n: int) -> np.ndarray:
    """Raw id (str) of each internal id 0..n-1 from an id map (:func:`read_id_map`); the id as
    text where the map has no entry."""
    return np.array([raw.get(i, str(i)) for i in range(n)], dtype=object)


def read_id_map(url: str, name: str = ITEM_MAP) -> dict[int, str]:
    """Internal id -> raw id from a ``raw_id<TAB>id`` map of the dataset (data/prepare.py)."""
    path = dio.join(url, name)
    if not dio.exists(path):
        return {}
    out: dict[int, str] = {}
    with dio.open_url(path, "rt") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        raw_col, id_col = header.index("raw_id"), header.index("id")
        for line in fh:
            fields = line.rstrip("\n").split("\t")
            out[int(fields[id_col])] = fields[raw_col]
    return out


def _dataset_name(url: str) -> str:
    name = posixpath.basename(url.rstrip("/"))
    for comp in COMPRESSION_SUFFIXES:
        if name.lower().endswith(comp):
            name = name[: -len(comp)]
            break
    stem = posixpath.splitext(name)[0]
    return stem or "dataset"


def prepare(interactions_url: str, out_url: str, items_url: str | None = None,
            image_features_url: str | None = None, k_core: int = 5, seed: int = 0,
            split: tuple[float, float, float] = (0.8, 0.1, 0.1), fmt: str = "mmrec",
            text_fields: list[str] | None = None, text_encoder: str = "minilm",
            min_rating: float | None = None, columns: dict | None = None, progress: bool = True,
            text_modalities: dict[str, list[str]] | None = None) -> Dataset:
    """Build the dataset folder at ``out_url`` from raw files (steps in the module docstring).

    ``items_url`` gives the ``text`` modality (``text_fields`` joined), or one text
    modality per entry of ``text_modalities`` (name -> fields), e.g. MovieLens titles
    and genres as two modalities so that fusion has something to weigh;
    ``image_features_url`` gives the ``image`` one; at least one is needed. Returns
    the dataset that was written.
    """
    from margo_dist.data.formats import FORMATS, write_dataset
    from margo_dist.data.text_encoder import ENCODERS, encode_texts, minilm_model_dir

    if fmt not in FORMATS:
        raise ConfigError(f"output format {fmt!r} is not one of {list(FORMATS)}")
    if items_url is None and image_features_url is None:
        raise ConfigError("prepare needs an item text file or an image feature file: "
                          "a dataset needs at least one modality")
    if items_url is not None and text_encoder not in ENCODERS:
        raise ConfigError(f"text encoder {text_encoder!r} is not one of {list(ENCODERS)}")
    if not isinstance(k_core, int) or k_core < 0:
        raise ConfigError(f"k_core={k_core!r}: expected a non-negative integer")
    if items_url is not None and text_encoder == "minilm":
        minilm_model_dir()  # fail before the work, not after it, when the extra is missing
    unknown = sorted(set(columns or {}) - set(COLUMN_KEYS))
    if unknown:
        raise ConfigError(f"columns: unknown key(s) {unknown}; expected some of {list(COLUMN_KEYS)}")
    ratios = _check_ratios(split)

    def say(msg: str) -> None:
        if progress:
            print(f"[prepare] {msg}", file=sys.stderr, flush=True)

    notes: list[str] = []
    found: dict[str, str | None] = {}

    def pick(header: list[str]) -> list[str]:
        found["user"] = find_column(header, "user", interactions_url, columns, required=True)
        found["item"] = find_column(header, "item", interactions_url, columns, required=True)
        found["rating"] = find_column(header, "rating", interactions_url, columns,
                                       required=min_rating is not None)
        found["timestamp"] = find_column(header, "timestamp", interactions_url, columns, required=False)
        return list(dict.fromkeys(c for c in found.values() if c is not None))

    reviews = dumps.detect_reviews(interactions_url) if columns is None else None
    if reviews is not None:
        say(f"{interactions_url}: {reviews.name} ({dumps.review_year(interactions_url, reviews)} layout)")
        table = Table(interactions_url, "jsonl", list(reviews.fields), dumps.read_reviews(interactions_url, reviews))
        found.update(zip(COLUMN_KEYS, reviews.fields))
    else:
        table = read_table(interactions_url, pick)
    n_raw = table.n_rows
    if n_raw == 0:
        raise DataError(f"{interactions_url}: no interaction rows")
    u_code, user_raw = id_codes(id_column(table, found["user"]))
    i_code, item_raw = id_codes(id_column(table, found["item"]))
    ts = float_column(table, found["timestamp"]) if found["timestamp"] else None
    rating = float_column(table, found["rating"]) if min_rating is not None else None
    say(f"read {n_raw} rows, {len(user_raw)} users, {len(item_raw)} items from {interactions_url}")

    rows = _latest_per_pair(u_code, i_code, ts)
    if len(rows) < n_raw:
        notes.append(f"{interactions_url}: {n_raw - len(rows)} repeated (user, item) rows dropped; "
                     "the latest of each pair is kept")
    if rating is not None:
        rows = rows[rating[rows] >= min_rating]
        say(f"min_rating {min_rating}: {len(rows)} interactions left")
    u, i = u_code[rows], i_code[rows]
    keep, passes = k_core_mask(u, i, k_core)
    u, i = u[keep], i[keep]
    if len(u) == 0:
        raise DataError(f"{interactions_url}: no interaction is left after filtering "
                        f"(min_rating={min_rating}, k_core={k_core})")
    say(f"{k_core}-core: {len(u)} interactions left (filtering passes: {passes})")

    # dense ids keep the codes' order: the rows stay sorted by (user, item), as _latest_per_pair gave them
    users_kept, user, _ = dense_ids(u, len(user_raw))
    items_kept, item, _ = dense_ids(i, len(item_raw))
    label = split_per_user(user, tuple(ratios), seed)
    user_ids, item_ids = user_raw[users_kept], item_raw[items_kept]

    # a feature table too large for memory (McAuley's 4,096-d images at 10x Electronics: 10 GB)
    # is written to this folder as it is read, then moved into the output (or read back in row
    # groups for Parquet)
    with tempfile.TemporaryDirectory(prefix=".margo-prepare-", dir=_scratch_parent(out_url)) as scratch:
        features: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        from_dump = reviews is not None
        if image_features_url is not None:
            if dumps.is_image_binary(image_features_url):
                features["image"], present["image"], found_notes = dumps.read_image_binary(
                    image_features_url, item_ids, os.path.join(scratch, "image_feat.npy"))
                notes.extend(found_notes)
                from_dump = True
            else:
                features["image"], present["image"] = _image_features(image_features_url, item_ids, notes)
            say(f"image features {features['image'].shape} from {image_features_url}")
        texts: dict[str, list[str]] = {}
        if items_url is not None:
            groups = text_modalities or {"text": text_fields}
            if "image" in groups and "image" in features:
                raise ConfigError("text modality name 'image' is used twice")
            meta = dumps.detect_meta(items_url)
            if meta is not None:
                texts = _dump_texts(items_url, meta, item_ids, groups, notes)
                from_dump = True
            else:
                items_table = read_table(items_url)  # once, however many text modalities read it
                texts = {name: _item_texts(items_table, item_ids, fields, columns, notes)
                         for name, fields in groups.items()}
            present.update((name, np.array([bool(t) for t in ts], dtype=bool)) for name, ts in texts.items())
        if from_dump:
            _check_present(present, item_ids, [u for u in (image_features_url, items_url) if u], say)
        for name, ts in texts.items():
            say(f"encoding {len(ts)} item texts for modality {name!r} with {text_encoder}")
            features[name] = encode_texts(ts, encoder=text_encoder, progress=progress)

        ds = Dataset(name=_dataset_name(interactions_url), n_users=len(user_ids), n_items=len(item_ids),
                     user=user, item=item, label=label, features=features, source=interactions_url, notes=notes,
                     present=present if from_dump else {})
        extra = {USER_MAP: _mapping_file(user_ids, interactions_url, "user"),
                 ITEM_MAP: _mapping_file(item_ids, interactions_url, "item")}
        write_dataset(ds, out_url, fmt, extra=extra,
                      take=frozenset(m for m, f in features.items() if isinstance(f, np.memmap)))
        counts = ", ".join(f"{SPLIT_NAMES[k]} {int((label == k).sum())}" for k in SPLIT_NAMES)
        say(f"wrote {out_url} ({fmt}): {ds.n_users} users, {ds.n_items} items, {len(user)} interactions ({counts})")
        for note in notes:
            say(f"note: {note}")
        for mod, feat in ds.features.items():
            if isinstance(feat, np.memmap):  # the scratch file goes; map the written one where it is a .npy
                ds.features[mod] = _written_feature(out_url, fmt, mod, feat)
    return ds


def _written_feature(out_url: str, fmt: str, mod: str, feat: np.ndarray) -> np.ndarray:
    """The output's own copy of a feature table held on disk, mapped (MMRec, local); else the
    scratch map, which outlives its file's name on POSIX."""
    if fmt == "mmrec" and dio.is_local(dio.fs_and_path(out_url)[0]):
        return dio.load_npy(dio.join(out_url, f"{mod}{FEAT_SUFFIX}"), mmap=True)
    return feat
