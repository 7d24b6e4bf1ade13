"""Dataset readers and writers: the MMRec layout (read as it is) and a Parquet layout.

MMRec folder::

    <name>.inter            tab separated, header line; userID, itemID, x_label required
    <modality>_feat.npy     one [n_items, dim] float array per modality
    <modality>_present.npy  optional bool [n_items]: which items have that feature (MMRec
                            ignores it); absent means every item has it

Parquet folder (large data; columnar, typed, compresses well)::

    interactions.parquet    user_id int64, item_id int64, x_label int8
    features/<modality>.parquet
                            item_id int64 (0..n-1 in order), feature fixed_size_list<float>[dim],
                            optional present bool (as <modality>_present.npy above)
    meta.json               {"name", "n_users", "n_items", "modalities"}

Readers keep the file's row order, so array index ``i`` is data row ``i + 1``: that
lets :mod:`margo_dist.data.validate` name the offending row of the file. A folder is
written under a temporary sibling name and renamed at the end, so a failed write
leaves no output folder behind.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from margo_dist.config import DataConfig
from margo_dist.data import io as dio
from margo_dist.data.dataset import Dataset
from margo_dist.data.validate import INTERACTIONS, META, feature_key, presence_key, row_ref, validate
from margo_dist.errors import ConfigError, DataError

FORMATS = ("mmrec", "parquet")
# numpy has no bfloat16: a dataset read for bfloat16 holds float32 rows (memory-mapped where the
# layout allows) and the trainer converts them (train/loop.py load_training_data)
FEATURE_DTYPES = ("float32", "float16", "bfloat16")
MMREC_COLUMNS = ("userID", "itemID", "x_label")
PARQUET_COLUMNS = ("user_id", "item_id", "x_label")
FEAT_SUFFIX = "_feat.npy"
PRESENT_SUFFIX = "_present.npy"
PRESENT_COLUMN = "present"
INTER_FILE = "interactions.parquet"
FEATURES_DIR = "features"
META_FILE = "meta.json"
PARQUET_FEATURE_ROWS = 8192  # rows per row group of a feature file (32 MB at 4,096 float32)
_INT_RE = r"^-?[0-9]+$"


def read_dataset(url: str, fmt: str = "mmrec", modalities: list[str] | None = None, name: str = "",
                 dedupe: bool = False, feature_dtype: str = "float32", mmap: bool = False) -> Dataset:
    """Read a dataset folder and validate it; any problem is a DataError naming file, row and field.

    ``modalities`` None: every ``*_feat.npy`` (MMRec) or meta.json's list (Parquet).
    ``mmap`` maps local .npy feature files instead of reading them (MMRec only).
    """
    ds, files = load_dataset(url, fmt, modalities, name, feature_dtype, mmap)
    validate(ds, files, dedupe=dedupe)
    return ds


def read_dataset_cfg(cfg: DataConfig) -> Dataset:
    """Read the dataset a :class:`margo_dist.config.DataConfig` names."""
    if not cfg.path:
        raise ConfigError("data.path is empty: no dataset folder to read")
    return read_dataset(cfg.path, cfg.format, list(cfg.modalities) if cfg.modalities else None, cfg.name,
                        cfg.dedupe, cfg.feature_dtype, mmap=cfg.feature_dtype == "bfloat16")


def load_dataset(url: str, fmt: str = "mmrec", modalities: list[str] | None = None, name: str = "",
                 feature_dtype: str = "float32", mmap: bool = False) -> tuple[Dataset, dict[str, str]]:
    """Parse a dataset folder without the validation rules.

    Returns the dataset and the URL of each file it came from (keys as in
    :mod:`margo_dist.data.validate`). Only what stops parsing is an error here: a
    missing file or column, a non-integer id, a pickled or non-2-D feature array.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"data.format={fmt!r} is not one of {list(FORMATS)}")
    if feature_dtype not in FEATURE_DTYPES:
        raise ConfigError(f"data.feature_dtype={feature_dtype!r} is not one of {list(FEATURE_DTYPES)}")
    if modalities is not None and len(modalities) == 0:
        raise ConfigError(f"{url}: the modality list is empty; at least one modality is needed")
    if modalities is not None and len(set(modalities)) != len(modalities):
        raise ConfigError(f"{url}: the modality list {modalities} repeats a name")
    if not dio.exists(url):
        raise DataError(f"{url}: dataset folder not found")
    if not dio.isdir(url):
        raise DataError(f"{url}: not a folder (a dataset is a folder of files)")
    if fmt == "mmrec":
        return _load_mmrec(url, modalities, name, feature_dtype, mmap)
    return _load_parquet(url, modalities, name, feature_dtype)


def write_dataset(ds: Dataset, url: str, fmt: str, extra: dict[str, bytes] | None = None,
                  take: frozenset[str] = frozenset()) -> None:
    """Write ``ds`` as a folder in ``fmt`` (mmrec | parquet), replacing any folder at ``url``.

    ``extra`` maps relative paths to bytes written into the folder too (id mappings
    from the prepare step). ``take`` names feature tables held as maps of scratch .npy
    files the caller owns: an MMRec folder on the same disk gets those files moved in,
    not copied. Everything goes to a temporary sibling first, so a failure leaves
    neither a partial folder nor a damaged earlier one.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"output format {fmt!r} is not one of {list(FORMATS)}")
    n = len(ds.user)
    if len(ds.item) != n or len(ds.label) != n:
        raise DataError(f"dataset {ds.name!r}: user/item/label arrays have lengths "
                        f"{len(ds.user)}/{len(ds.item)}/{len(ds.label)}; they must be equal")
    if not ds.features:
        raise DataError(f"dataset {ds.name!r}: no feature table to write")
    with dio.staging_dir(url) as tmp_url:
        if fmt == "mmrec":
            _write_mmrec(ds, tmp_url, take)
        else:
            _write_parquet(ds, tmp_url)
        for rel, data in (extra or {}).items():
            _write_extra(tmp_url, rel, data)


def convert(src: str, dst: str, src_fmt: str = "mmrec", dst_fmt: str = "parquet", name: str = "",
            modalities: list[str] | None = None) -> None:
    """Read (and validate) a dataset in one layout and write it in another."""
    ds = read_dataset(src, src_fmt, modalities=modalities, name=name)
    write_dataset(ds, dst, dst_fmt)


# ---------------------------------------------------------------- MMRec


def _load_mmrec(url: str, modalities: list[str] | None, name: str, feature_dtype: str,
                mmap: bool) -> tuple[Dataset, dict[str, str]]:
    entries = dio.listdir(url)
    inter_name = _mmrec_inter_name(url, name, entries)
    inter_url = dio.join(url, inter_name)
    if modalities is None:
        modalities = sorted(e[: -len(FEAT_SUFFIX)] for e in entries if e.endswith(FEAT_SUFFIX))
        if not modalities:
            raise DataError(f"{url}: no <modality>{FEAT_SUFFIX} feature file found")
    user, item, label = _read_inter(inter_url)
    files = {INTERACTIONS: inter_url}
    features: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for mod in modalities:
        feat_url = dio.join(url, f"{mod}{FEAT_SUFFIX}")
        files[feature_key(mod)] = feat_url
        features[mod] = _as_feature(dio.load_npy(feat_url, mmap=mmap), feat_url, feature_dtype)
        if f"{mod}{PRESENT_SUFFIX}" in entries:
            files[presence_key(mod)] = dio.join(url, f"{mod}{PRESENT_SUFFIX}")
            present[mod] = dio.load_npy(files[presence_key(mod)])
    n_users = int(user.max()) + 1 if len(user) else 0
    n_items = next(iter(features.values())).shape[0]
    ds = Dataset(name=inter_name[: -len(".inter")], n_users=max(n_users, 0), n_items=n_items, user=user,
                 item=item, label=label, features=features, source=url, present=present)
    return ds, files


def _mmrec_inter_name(url: str, name: str, entries: list[str]) -> str:
    """The interaction file of an MMRec folder: ``<data.name>.inter``, or its only ``*.inter``."""
    if name:
        return f"{name}.inter"
    found = [e for e in entries if e.endswith(".inter")]
    if len(found) != 1:
        what = "no *.inter file" if not found else f"several *.inter files ({', '.join(found)})"
        raise DataError(f"{url}: {what}; set data.name to the stem of the one to read")
    return found[0]


def read_interactions(cfg: DataConfig, n_users: int, n_items: int) -> Dataset:
    """The dataset's interactions alone, its feature files never opened (``features`` is empty).

    For a distributed worker, whose feature rows come from its shard and whose driver
    validated the whole dataset first; ``n_users`` and ``n_items`` are the driver's
    counts (the shard manifest's). Ids, labels and duplicates are checked as
    :func:`read_dataset` does, ``data.dedupe`` included, so the rows are the driver's.
    """
    from margo_dist.data.validate import check_duplicates, check_ids, check_labels

    if not cfg.path:
        raise ConfigError("data.path is empty: no dataset folder to read")
    if cfg.format not in FORMATS:
        raise ConfigError(f"data.format={cfg.format!r} is not one of {list(FORMATS)}")
    if cfg.format == "mmrec":
        inter_name = _mmrec_inter_name(cfg.path, cfg.name, dio.listdir(cfg.path))
        inter_url = dio.join(cfg.path, inter_name)
        user, item, label = _read_inter(inter_url)
        name = inter_name[: -len(".inter")]
    else:
        inter_url = dio.join(cfg.path, INTER_FILE)
        user, item, label = _read_interactions_parquet(inter_url)
        name = cfg.name or posixpath.basename(dio.fs_and_path(cfg.path)[1].rstrip("/"))
    ds = Dataset(name=name, n_users=n_users, n_items=n_items, user=user, item=item, label=label, features={},
                 source=cfg.path, present=read_presence(cfg, n_items))
    files = {INTERACTIONS: inter_url}
    check_labels(ds, files)
    check_ids(ds, files)
    check_duplicates(ds, files, dedupe=cfg.dedupe)
    return ds


def read_presence(cfg: DataConfig, n_items: int) -> dict[str, np.ndarray]:
    """Which items have each of ``cfg.modalities`` (only modalities with a record), without
    reading any feature values: a distributed worker's view of the dataset's missing pairs."""
    out: dict[str, np.ndarray] = {}
    for mod in cfg.modalities:
        if cfg.format == "mmrec":
            url = dio.join(cfg.path, f"{mod}{PRESENT_SUFFIX}")
            if dio.exists(url):
                out[mod] = dio.load_npy(url)
        else:
            url = dio.join(cfg.path, FEATURES_DIR, f"{mod}.parquet")
            table = read_parquet_columns(url, [], optional=(PRESENT_COLUMN,))
            if PRESENT_COLUMN in table.column_names:
                out[mod] = table.column(PRESENT_COLUMN).to_numpy().astype(bool)
        if mod in out and out[mod].shape != (n_items,):
            raise DataError(f"{url}: presence of {out[mod].shape[0]} items, the dataset has {n_items}")
    return out


def _read_inter(url: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three required columns of an MMRec .inter file, in file order."""
    if not dio.exists(url):
        raise DataError(f"{url}: file not found")
    with dio.open_url(url, "rb") as fh:
        raw = fh.read()
    if not raw.strip():
        raise DataError(f"{url}: the file is empty; expected a header line with columns "
                        f"{', '.join(MMREC_COLUMNS)}, then one interaction per line")
    end = raw.find(b"\n")
    header_line = raw[: end if end >= 0 else len(raw)].rstrip(b"\r").decode("utf-8", errors="replace").lstrip("\ufeff")
    if not header_line.strip():
        raise DataError(f"{url}: line 1: empty; expected a header with columns {', '.join(MMREC_COLUMNS)}")
    header = [h.strip() for h in header_line.split("\t")]
    for col in MMREC_COLUMNS:
        if col not in header:
            raise DataError(f"{url}: required column {col!r} is missing from the header "
                            f"(found {header}); the file must be tab separated")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    raw = raw.rstrip(b"\r\n")
    if b"\n" not in raw:  # pyarrow's own words for this are about skipping rows and block sizes
        raise DataError(f"{url} has a header but no interactions: one line per (user, item) pair must follow it")
    blank = min((p for p in (raw.find(b"\n\n"), raw.find(b"\n\r\n")) if p >= 0), default=-1)
    if blank >= 0:  # refused so that "row N" is always "line N + 1"
        lineno = raw[:blank].count(b"\n") + 2
        raise DataError(f"{url}: line {lineno} is empty; remove blank lines")
    columns = list(MMREC_COLUMNS)
    try:
        table = _parse_inter(raw, header, pa.int64())  # fast path: clean integer columns
        if any(table.column(c).null_count for c in columns):
            raise pa.ArrowInvalid("empty value")
        user, item, label = (table.column(c).to_numpy().astype(np.int64, copy=False) for c in columns)
    except pa.ArrowInvalid:
        try:  # slow path, only for a bad or padded file: strings, so the bad row can be named
            table = _parse_inter(raw, header, pa.string())
        except pa.ArrowInvalid as exc:
            raise DataError(f"{url}: {_bad_line(raw, len(header))}({exc})") from exc
        user, item, label = (_int_column(table.column(c), url, c) for c in columns)
    label = _label_column(label, url, "x_label")
    return user, item, label


def _parse_inter(raw: bytes, header: list[str], dtype: pa.DataType) -> pa.Table:
    return pacsv.read_csv(
        io.BytesIO(raw),
        read_options=pacsv.ReadOptions(column_names=header, skip_rows=1),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(MMREC_COLUMNS),
            column_types={c: dtype for c in MMREC_COLUMNS},
            strings_can_be_null=False,
        ),
    )


def _bad_line(raw: bytes, n_fields: int) -> str:
    """Where a .inter line has the wrong field count (only run when parsing failed)."""
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        line = line.rstrip(b"\r")
        if lineno == 1 or not line:
            continue
        got = line.count(b"\t") + 1
        if got != n_fields:
            return f"row {lineno - 1} (line {lineno}): {got} tab-separated fields, header has {n_fields} "
    return ""


def _int_column(col: pa.ChunkedArray, url: str, field: str) -> np.ndarray:
    """A string column of integers as int64; the first non-integer value is an error."""
    col = pc.utf8_trim_whitespace(col.combine_chunks() if col.num_chunks != 1 else col.chunk(0))
    ok = pc.match_substring_regex(col, _INT_RE)
    bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
    if len(bad):
        idx = int(bad[0])
        raise DataError(f"{row_ref(url, idx)}, field {field}: {col[idx].as_py()!r} is not an integer "
                        f"({len(bad)} such rows)")
    try:
        return pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    except pa.ArrowInvalid as exc:
        raise DataError(f"{url}: field {field}: a value does not fit in int64 ({exc})") from exc


def _label_column(label: np.ndarray, url: str, field: str) -> np.ndarray:
    """Labels as int8; a value int8 cannot hold is reported here (the rest in validate)."""
    bad = np.flatnonzero((label < -128) | (label > 127))
    if len(bad):
        idx = int(bad[0])
        raise DataError(f"{row_ref(url, idx)}, field {field}: x_label={int(label[idx])} is not one of "
                        f"0 (train), 1 (valid), 2 (test) ({len(bad)} such rows)")
    return label.astype(np.int8)


def _as_feature(arr: np.ndarray, url: str, feature_dtype: str) -> np.ndarray:
    """A 2-D numeric feature table in ``feature_dtype`` (non-finite values are checked in validate)."""
    if arr.ndim != 2:
        raise DataError(f"{url}: feature array has shape {arr.shape}; expected 2-D [n_items, dim]")
    if arr.dtype.kind not in "fiub":
        raise DataError(f"{url}: feature array has dtype {arr.dtype}; expected a float array")
    stored = "float32" if feature_dtype == "bfloat16" else feature_dtype
    if arr.dtype == np.dtype(stored):
        return arr
    with np.errstate(over="ignore"):  # overflow to inf is reported by validate, with the row
        return arr.astype(stored)


def _write_mmrec(ds: Dataset, url: str, take: frozenset[str] = frozenset()) -> None:
    name = ds.name or "dataset"
    table = pa.table({
        "userID": pa.array(np.asarray(ds.user, dtype=np.int64)),
        "itemID": pa.array(np.asarray(ds.item, dtype=np.int64)),
        "x_label": pa.array(np.asarray(ds.label, dtype=np.int64)),
    })
    fs, path = dio.fs_and_path(dio.join(url, f"{name}.inter"))
    with fs.open(path, "wb") as fh:
        fh.write(("\t".join(MMREC_COLUMNS) + "\n").encode())
        pacsv.write_csv(table, fh, pacsv.WriteOptions(include_header=False, delimiter="\t"))
    for mod, feat in ds.features.items():
        _check_writable_feature(ds, mod, feat)
        target = dio.join(url, f"{mod}{FEAT_SUFFIX}")
        if not (mod in take and dio.move_npy(feat, target)):
            dio.save_npy(target, feat)  # a map stays one: copied by file reads
        if mod in ds.present:
            dio.save_npy(dio.join(url, f"{mod}{PRESENT_SUFFIX}"), np.asarray(ds.present[mod]))


# ---------------------------------------------------------------- Parquet


def _load_parquet(url: str, modalities: list[str] | None, name: str,
                  feature_dtype: str) -> tuple[Dataset, dict[str, str]]:
    meta_url = dio.join(url, META_FILE)
    meta = _read_meta(meta_url)
    if modalities is None:
        modalities = meta.get("modalities")
        if modalities is None:
            feat_dir = dio.join(url, FEATURES_DIR)
            modalities = sorted(e[: -len(".parquet")] for e in dio.listdir(feat_dir)
                                if e.endswith(".parquet")) if dio.exists(feat_dir) else []
        if not modalities:
            raise DataError(f"{meta_url}: key modalities: no modality listed and no features/*.parquet found")
    inter_url = dio.join(url, INTER_FILE)
    user, item, label = _read_interactions_parquet(inter_url)
    files = {INTERACTIONS: inter_url}
    if dio.exists(meta_url):
        files[META] = meta_url
    features: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for mod in modalities:
        feat_url = dio.join(url, FEATURES_DIR, f"{mod}.parquet")
        files[feature_key(mod)] = feat_url
        matrix, mask = _read_feature_parquet(feat_url)
        features[mod] = _as_feature(matrix, feat_url, feature_dtype)
        if mask is not None:
            files[presence_key(mod)] = feat_url
            present[mod] = mask
    n_items = next(iter(features.values())).shape[0]
    if "n_items" in meta and meta["n_items"] != n_items:
        first = next(iter(features))
        raise DataError(f"{meta_url}: key n_items={meta['n_items']} but {files[feature_key(first)]} "
                        f"has {n_items} rows")
    n_users = meta["n_users"] if "n_users" in meta else (int(user.max()) + 1 if len(user) else 0)
    ds_name = name or meta.get("name") or posixpath.basename(dio.fs_and_path(url)[1].rstrip("/"))
    ds = Dataset(name=ds_name, n_users=max(n_users, 0), n_items=n_items, user=user, item=item, label=label,
                 features=features, source=url, present=present)
    return ds, files


def _read_meta(url: str) -> dict[str, Any]:
    """meta.json's keys, type-checked; an absent file gives defaults derived from the data."""
    if not dio.exists(url):
        return {}
    with dio.open_url(url, "rb") as fh:
        try:
            meta = json.loads(fh.read().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{url}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{url}: expected a JSON object, got {type(meta).__name__}")
    for key in ("n_users", "n_items"):
        if key in meta and (not isinstance(meta[key], int) or isinstance(meta[key], bool) or meta[key] < 0):
            raise DataError(f"{url}: key {key}={meta[key]!r} must be a non-negative integer")
    if "name" in meta and not isinstance(meta["name"], str):
        raise DataError(f"{url}: key name={meta['name']!r} must be a string")
    if "modalities" in meta:
        mods = meta["modalities"]
        if not isinstance(mods, list) or not mods or not all(isinstance(m, str) and m for m in mods):
            raise DataError(f"{url}: key modalities={mods!r} must be a non-empty list of names")
    return meta


def read_parquet_columns(url: str, columns: list[str], optional: tuple[str, ...] = ()) -> pa.Table:
    """``columns`` of a Parquet file, and those of ``optional`` it has; a missing file or column is a
    DataError naming it."""
    if not dio.exists(url):
        raise DataError(f"{url}: file not found")
    fs, path = dio.fs_and_path(url)
    try:
        with fs.open(path, "rb") as fh:
            schema = pq.read_schema(fh)
            missing = [c for c in columns if c not in schema.names]
            if missing:
                raise DataError(f"{url}: required column {missing[0]!r} is missing (found {schema.names})")
            fh.seek(0)
            return pq.read_table(fh, columns=columns + [c for c in optional if c in schema.names])
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{url}: not a readable Parquet file ({exc})") from exc


def _read_interactions_parquet(url: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = read_parquet_columns(url, list(PARQUET_COLUMNS))
    user = _parquet_int(table.column("user_id"), url, "user_id")
    item = _parquet_int(table.column("item_id"), url, "item_id")
    label = _label_column(_parquet_int(table.column("x_label"), url, "x_label"), url, "x_label")
    return user, item, label


def _parquet_int(col: pa.ChunkedArray, url: str, field: str) -> np.ndarray:
    """An integer Parquet column as int64; nulls and non-integer types are errors."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if arr.null_count:
        idx = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{row_ref(url, idx)}, field {field}: missing value ({arr.null_count} such rows)")
    if not pa.types.is_integer(arr.type):
        where = ""
        if pa.types.is_floating(arr.type):
            vals = arr.to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(~np.isfinite(vals) | (vals != np.round(vals)))
            if len(bad):
                where = f"; first non-integer value {vals[bad[0]]} at {row_ref(url, int(bad[0]))}"
        raise DataError(f"{url}: field {field} has type {arr.type}; expected integer ids (int64){where}")
    try:
        return pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    except pa.ArrowInvalid as exc:
        raise DataError(f"{url}: field {field}: a value does not fit in int64 ({exc})") from exc


def _read_feature_parquet(url: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``feature`` as a [n, dim] array via the flat values buffer (no per-row Python work), and the
    ``present`` column as bool [n] when the file has one."""
    table = read_parquet_columns(url, ["item_id", "feature"], optional=(PRESENT_COLUMN,))
    ids = _parquet_int(table.column("item_id"), url, "item_id")
    bad = np.flatnonzero(ids != np.arange(len(ids), dtype=np.int64))
    if len(bad):
        idx = int(bad[0])
        raise DataError(f"{row_ref(url, idx)}, field item_id: {int(ids[idx])} but item ids must be "
                        f"0..{len(ids) - 1} in order (expected {idx})")
    matrix = parquet_feature_matrix(table.column("feature"), url, lambda idx: row_ref(url, idx))
    if PRESENT_COLUMN not in table.column_names:
        return matrix, None
    col = table.column(PRESENT_COLUMN)
    if not pa.types.is_boolean(col.type) or col.null_count:
        raise DataError(f"{url}: field {PRESENT_COLUMN} has type {col.type} with {col.null_count} nulls; "
                        "expected bool without nulls")
    return matrix, col.to_numpy().astype(bool)


def parquet_feature_matrix(col: pa.ChunkedArray, url: str, row_name: Callable[[int], str],
                           fixed_size: bool = True) -> np.ndarray:
    """A Parquet ``feature`` column (one vector per row) as a [n, dim] array, via the flat values buffer.

    ``fixed_size``: the dataset layout's fixed_size_list<float>[dim]; otherwise any list
    of numbers whose rows all have the first row's length (raw image features). A
    missing vector or value is an error naming ``row_name(row index)``. The values keep
    their type; callers cast.
    """
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    t = arr.type
    if fixed_size:
        if not pa.types.is_fixed_size_list(t) or not pa.types.is_floating(t.value_type):
            raise DataError(f"{url}: field feature has type {t}; expected fixed_size_list<float32>[dim]")
    elif not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
            or not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
        raise DataError(f"{url}: field feature has type {t}; expected list<float>")
    if arr.null_count:
        idx = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{row_name(idx)}, field feature: missing vector ({arr.null_count} such rows)")
    if fixed_size:
        dim = t.list_size
    else:
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        dim = int(lengths[0]) if len(lengths) else 0
        bad = np.flatnonzero(lengths != dim)
        if len(bad):
            idx = int(bad[0])
            raise DataError(f"{row_name(idx)}, field feature: length {int(lengths[idx])}, row 1 has {dim}")
    flat = arr.flatten()
    if flat.null_count:
        pos = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{row_name(pos // dim)}, field feature, column {pos % dim + 1}: missing value")
    return flat.to_numpy(zero_copy_only=False).reshape(len(arr), dim)


def _write_parquet(ds: Dataset, url: str) -> None:
    inter = pa.table({
        "user_id": pa.array(np.asarray(ds.user, dtype=np.int64)),
        "item_id": pa.array(np.asarray(ds.item, dtype=np.int64)),
        "x_label": pa.array(np.asarray(ds.label, dtype=np.int8)),
    })
    _write_table(inter, dio.join(url, INTER_FILE))
    dio.makedirs(dio.join(url, FEATURES_DIR))
    for mod, feat in ds.features.items():
        _check_writable_feature(ds, mod, feat)
        _write_feature_parquet(feat, ds.present.get(mod), dio.join(url, FEATURES_DIR, f"{mod}.parquet"))
    meta = {"name": ds.name, "n_users": int(ds.n_users), "n_items": int(ds.n_items),
            "modalities": list(ds.features)}
    fs, path = dio.fs_and_path(dio.join(url, META_FILE))
    with fs.open(path, "wb") as fh:
        fh.write(json.dumps(meta, indent=2).encode())


def _write_feature_parquet(feat: np.ndarray, present: np.ndarray | None, url: str) -> None:
    """One feature table as Parquet, written in row groups (a table on disk is never read whole)."""
    dim = feat.shape[1]
    dtype = feat.dtype if feat.dtype in (np.float16, np.float32) else np.dtype(np.float32)
    schema = pa.schema([("item_id", pa.int64()), ("feature", pa.list_(pa.from_numpy_dtype(dtype), dim))]
                       + ([(PRESENT_COLUMN, pa.bool_())] if present is not None else []))
    fs, path = dio.fs_and_path(url)
    with fs.open(path, "wb") as fh, pq.ParquetWriter(fh, schema) as writer:
        lo = 0
        for block in dio.npy_row_chunks(feat, PARQUET_FEATURE_ROWS):
            hi = lo + len(block)
            columns = [pa.array(np.arange(lo, hi, dtype=np.int64)),
                       pa.FixedSizeListArray.from_arrays(pa.array(block.astype(dtype, copy=False).reshape(-1)), dim)]
            if present is not None:
                columns.append(pa.array(np.asarray(present[lo:hi])))
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
            lo = hi


def _write_table(table: pa.Table, url: str) -> None:
    fs, path = dio.fs_and_path(url)
    with fs.open(path, "wb") as fh:
        pq.write_table(table, fh)


# ---------------------------------------------------------------- shared


def _check_writable_feature(ds: Dataset, mod: str, feat: Any) -> None:
    """Refuse a feature table the readers would reject, before writing it."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", mod):
        raise DataError(f"dataset {ds.name!r}: modality name {mod!r} is not usable as a file name")
    arr = np.asarray(feat)
    if arr.dtype.kind not in "fiub":
        raise DataError(f"dataset {ds.name!r}, modality {mod!r}: feature dtype {arr.dtype} is not numeric")
    if arr.ndim != 2 or arr.shape[0] != ds.n_items:
        raise DataError(f"dataset {ds.name!r}, modality {mod!r}: feature shape {arr.shape}; "
                        f"expected [{ds.n_items}, dim]")
    mask = ds.present.get(mod)
    if mask is not None and (np.asarray(mask).dtype != bool or np.shape(mask) != (ds.n_items,)):
        raise DataError(f"dataset {ds.name!r}, modality {mod!r}: presence mask {np.asarray(mask).dtype} "
                        f"{np.shape(mask)}; expected bool [{ds.n_items}]")


def _write_extra(url: str, rel: str, data: bytes) -> None:
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise DataError(f"extra file path {rel!r} must be relative, without '.' or '..' parts")
    target = dio.join(url, *parts)
    if len(parts) > 1:
        dio.makedirs(dio.join(url, *parts[:-1]))
    fs, path = dio.fs_and_path(target)
    with fs.open(path, "wb") as fh:
        fh.write(data)

