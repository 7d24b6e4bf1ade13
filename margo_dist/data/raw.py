"""Raw interaction and item files read as string columns: CSV, TSV and JSON lines, compressed or not.

The reading half of ``data prepare`` (:mod:`margo_dist.data.prepare` does the rest):
the format comes from the suffix (.csv, .tsv/.tab, .jsonl/.json/.ndjson) or, for any
other suffix, from the first line; columns are found by their usual names (or the
names ``columns`` gives); ids and numbers are checked here, with errors that name the
file, row and line. The public Amazon dumps have their own readers (:mod:`margo_dist.data.dumps`).
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from margo_dist.data import io as dio
from margo_dist.errors import DataError

COLUMN_KEYS = ("user", "item", "rating", "timestamp")
# Recognised header names per column, in priority order (compared lower-cased,
# after dropping a RecBole ``:type`` suffix).
COLUMN_CANDIDATES: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userid", "reviewerid", "uid"),
    "item": ("item", "item_id", "itemid", "asin", "movie_id", "movieid", "iid", "parent_asin"),
    "rating": ("rating", "overall", "score"),
    "timestamp": ("timestamp", "unixreviewtime", "time", "ts"),
}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")
TEXT_TYPES = ("token", "token_seq")  # RecBole field types that hold text
_INT_ID_RE = r"^[+-]?[0-9]{1,18}$"
Picker = Callable[[list[str]], list[str]]  # header -> the columns to keep



@dataclass
class Table:
    """A raw file as string columns (nulls where a value is absent)."""

    url: str
    kind: str  # csv | tsv | jsonl
    header: list[str]
    columns: dict[str, pa.Array]
    textual: dict[str, bool] = field(default_factory=dict)  # column holds text (default text fields)
    raw: bytes = b""  # the decompressed file, to turn a row index into a line number

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def row(self, idx: int) -> str:
        """``file row N (line L)`` for data row index ``idx`` (blank lines are not rows)."""
        skip = 0 if self.kind == "jsonl" else 1
        seen = -1
        for lineno, line in enumerate(self.raw.split(b"\n"), start=1):
            if lineno <= skip or not line.strip():
                continue
            seen += 1
            if seen == idx:
                return f"{self.url} row {idx + 1} (line {lineno})"
        return f"{self.url} row {idx + 1}"


def base_name(name: str) -> str:
    """Header name without RecBole's ``:type`` suffix."""
    return name.rsplit(":", 1)[0] if ":" in name else name


def _type_of(name: str) -> str | None:
    return name.rsplit(":", 1)[1] if ":" in name else None


def find_column(header: list[str], key: str, url: str, columns: dict | None,
                 required: bool) -> str | None:
    """The header entry for logical column ``key`` (from ``columns`` or the usual names)."""
    wanted = (columns or {}).get(key)
    if wanted is not None:
        for h in header:
            if h == wanted or base_name(h) == wanted:
                return h
        for h in header:
            if base_name(h).lower() == str(wanted).lower():
                return h
        raise DataError(f"{url}: column {wanted!r} (given for {key!r}) is not in the header; "
                        f"columns found: {header}")
    lowered = {}
    for h in header:
        lowered.setdefault(base_name(h).strip().lower(), h)
    for cand in COLUMN_CANDIDATES[key]:
        if cand in lowered:
            return lowered[cand]
    if required:
        raise DataError(f"{url}: no {key} column; columns found: {header}; expected one of "
                        f"{list(COLUMN_CANDIDATES[key])} or set columns={{'{key}': NAME}}")
    return None


def _inner_suffix(url: str) -> str:
    name = posixpath.basename(url.rstrip("/")).lower()
    for comp in COMPRESSION_SUFFIXES:
        if name.endswith(comp):
            name = name[: -len(comp)]
            break
    return posixpath.splitext(name)[1]


def _read_bytes(url: str) -> bytes:
    if not dio.exists(url):
        raise DataError(f"{url}: file not found")
    try:
        with dio.open_url(url, "rb", compression="infer") as fh:
            raw = fh.read()
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"{url}: cannot read or decompress ({exc})") from exc
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw


def _detect_kind(url: str, raw: bytes) -> str:
    suffix = _inner_suffix(url)
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    first = next((ln for ln in raw.split(b"\n") if ln.strip()), b"")
    if first.lstrip().startswith(b"{"):
        return "jsonl"
    if b"\t" in first:
        return "tsv"
    if b"," in first:
        return "csv"
    raise DataError(f"{url}: cannot tell the format from the suffix {suffix!r} or the first line "
                    f"{first[:80]!r}; use .csv, .tsv or .jsonl")


def read_table(url: str, pick: Picker | None = None) -> Table:
    """Read ``url`` into string columns; ``pick(header)`` chooses the columns to keep."""
    raw = _read_bytes(url)
    if not raw.strip():
        raise DataError(f"{url}: the file is empty")
    kind = _detect_kind(url, raw)
    if kind == "jsonl":
        return _read_jsonl(url, raw, pick)
    return _read_delimited(url, raw, kind, pick)


def _read_delimited(url: str, raw: bytes, kind: str, pick: Picker | None) -> Table:
    delim = "\t" if kind == "tsv" else ","
    first = raw.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
    header = next(csv.reader([first], delimiter=delim, quoting=csv.QUOTE_NONE if kind == "tsv"
                             else csv.QUOTE_MINIMAL))
    header = [h.strip() for h in header]
    if not any(header):
        raise DataError(f"{url}: line 1: empty header")
    if len(set(header)) != len(header):
        raise DataError(f"{url}: line 1: the header repeats a column name ({header})")
    chosen = pick(header) if pick else header
    try:
        table = pacsv.read_csv(
            io.BytesIO(raw),
            read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, block_size=1 << 26),
            parse_options=pacsv.ParseOptions(delimiter=delim, quote_char=False if kind == "tsv" else '"'),
            convert_options=pacsv.ConvertOptions(include_columns=chosen,
                                                 column_types={c: pa.string() for c in chosen},
                                                 strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        where = _bad_delimited_row(raw, kind, len(header))
        raise DataError(f"{url}{where}: not readable as {kind.upper()} ({exc})") from exc
    cols = {c: one_chunk(table.column(c)) for c in chosen}
    typed = {h: _type_of(h) for h in header}
    textual = {}
    for c in chosen:
        t = typed[c]
        textual[c] = (t in TEXT_TYPES) if t is not None else _has_non_numeric(cols[c])
    return Table(url, kind, header, cols, textual, raw)


def _bad_delimited_row(raw: bytes, kind: str, n_fields: int) -> str:
    """Which row has the wrong number of fields (only run after parsing failed)."""
    text = raw.decode("utf-8", errors="replace").splitlines()
    reader = (ln.split("\t") for ln in text) if kind == "tsv" else csv.reader(text)
    row = 0
    for lineno, fields in enumerate(reader, start=1):
        if lineno == 1 or not fields or fields == [""]:
            continue
        row += 1
        if len(fields) != n_fields:
            return f" row {row} (line {lineno}): {len(fields)} fields where the header has {n_fields}"
    return ""


def _read_jsonl(url: str, raw: bytes, pick: Picker | None) -> Table:
    try:
        table = pajson.read_json(io.BytesIO(raw), read_options=pajson.ReadOptions(block_size=1 << 26))
        header = list(table.column_names)
        chosen = pick(header) if pick else header
        cols, textual = {}, {}
        for c in chosen:
            arr = one_chunk(table.column(c))
            textual[c] = _arrow_textual(arr.type)
            cols[c] = _arrow_to_text(arr)
        return Table(url, "jsonl", header, cols, textual, raw)
    except pa.ArrowInvalid:
        return _read_jsonl_python(url, raw, pick)


def _read_jsonl_python(url: str, raw: bytes, pick: Picker | None) -> Table:
    """Line-by-line reader: tolerates mixed value types and names the line of a bad object."""
    records: list[dict] = []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{url} row {len(records) + 1} (line {lineno}): not valid JSON ({exc})") from exc
        if not isinstance(obj, dict):
            raise DataError(f"{url} row {len(records) + 1} (line {lineno}): expected a JSON object, "
                            f"got {type(obj).__name__}")
        records.append(obj)
    header: list[str] = list(dict.fromkeys(k for rec in records for k in rec))
    chosen = pick(header) if pick else header
    cols, textual = {}, {}
    for c in chosen:
        values = [rec.get(c) for rec in records]
        textual[c] = any(isinstance(v, (str, list)) for v in values)
        cols[c] = pa.array([None if v is None else _text_of(v) for v in values], type=pa.string())
    return Table(url, "jsonl", header, cols, textual, raw)


def one_chunk(col: pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _arrow_textual(t: pa.DataType) -> bool:
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _arrow_to_text(arr: pa.Array) -> pa.Array:
    """Any JSON column as strings: scalars cast, lists flattened to space-joined text."""
    t = arr.type
    if pa.types.is_string(t):
        return arr
    if pa.types.is_large_string(t) or pa.types.is_integer(t) or pa.types.is_floating(t) \
            or pa.types.is_boolean(t):
        return pc.cast(arr, pa.string())
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    return pa.array([None if v is None else _text_of(v) for v in arr.to_pylist()], type=pa.string())


def _text_of(value: object) -> str:
    """A JSON value as text: lists flattened, numbers written out, objects as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = (_text_of(v) for v in value if v is not None)
        return " ".join(p for p in parts if p)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _has_non_numeric(col: pa.Array) -> bool:
    """A header without types counts as text when some non-empty value is not a number."""
    trimmed = pc.utf8_trim_whitespace(col)
    nonempty = pc.filter(trimmed, pc.not_equal(trimmed, ""))
    if len(nonempty) == 0:
        return False
    numeric = pc.match_substring_regex(nonempty, r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
    return not pc.all(numeric).as_py()


def id_column(table: Table, col: str) -> pa.Array:
    """An id column with surrounding whitespace removed; an empty id is an error."""
    arr = pc.utf8_trim_whitespace(table.columns[col])
    missing = np.asarray(pc.fill_null(pc.equal(arr, ""), True).to_numpy(zero_copy_only=False), dtype=bool)
    if missing.any():
        idx = int(np.flatnonzero(missing)[0])
        raise DataError(f"{table.row(idx)}, field {col}: empty id ({int(missing.sum())} such rows)")
    return arr


def float_column(table: Table, col: str) -> np.ndarray:
    """A numeric column as float64; the first unparseable or non-finite value is an error naming its row."""
    arr = pc.utf8_trim_whitespace(table.columns[col])
    try:
        out = pc.cast(arr, pa.float64())
        if out.null_count == 0:
            values = out.to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(~np.isfinite(values))
            if len(bad) == 0:
                return values
            idx = int(bad[0])
            raise DataError(f"{table.row(idx)}, field {col}: {arr[idx].as_py()!r} is not a finite number "
                            f"({len(bad)} such rows)")
    except pa.ArrowInvalid:
        pass
    for idx, v in enumerate(arr.to_pylist()):
        try:
            if v is None:
                raise ValueError
            float(v)
        except ValueError:
            raise DataError(f"{table.row(idx)}, field {col}: {v!r} is not a number") from None
    raise DataError(f"{table.url}: field {col}: not readable as numbers")


def _natural_order(ids: pa.Array, strs: np.ndarray) -> np.ndarray:
    """Permutation sorting raw ids (``strs``: the same ids as strings): by integer value when
    all are integers, else as strings."""
    if len(strs) and pc.all(pc.match_substring_regex(ids, _INT_ID_RE)).as_py():
        return np.lexsort((strs, strs.astype(np.int64)))
    return np.argsort(strs, kind="stable")


def id_codes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes whose order is the raw ids' natural order, and the raw ids by code."""
    enc = pc.dictionary_encode(arr)
    idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    dictionary = enc.dictionary
    strs = np.asarray(dictionary.to_numpy(zero_copy_only=False)).astype(str)
    perm = _natural_order(dictionary, strs)
    rank = np.empty(len(perm), dtype=np.int64)
    rank[perm] = np.arange(len(perm))
    return rank[idx], strs[perm]
