"""Readers of the public Amazon review dumps (McAuley lab, 2014 / 2018 / 2023), apart from prepare.

The layouts are told apart by the keys of their records, not by file names:

============  =====================================================================
reviews       ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``: 2014 and 2018
              (``reviews_<Cat>_5.json.gz``, ``<Cat>_5.json.gz``; 2018 adds ``vote``,
              ``style``, ``image``, ``verified``); ``user_id``, ``parent_asin``,
              ``rating``, ``timestamp`` (milliseconds): 2023 (``<Cat>.jsonl.gz``), whose
              items are the parent ASINs, so colour and size variants are one item.
metadata      2023: ``parent_asin`` with any of ``store``, ``features``, ``details``,
              ``main_category``, ``categories``; 2018: ``asin`` with any of
              ``category``, ``feature``, ``main_cat``, ``also_buy``, ``also_view``,
              ``rank``, ``tech1``, ``details``; 2014: ``asin`` with any of
              ``categories``, ``imUrl``, ``salesRank``, ``related``, or ``asin`` on a
              line that is a Python dict literal rather than JSON.
images        McAuley's ``image_features_<Cat>.b``: records of a 10-byte ASIN and
              4,096 little-endian float32, back to back (the first bytes are an ASIN;
              a Parquet file starts with ``PAR1`` instead).
============  =====================================================================

The 2014 metadata is one Python dict literal per line (single quotes). Such a line
is parsed by :func:`ast.literal_eval`, which builds literals only and never runs
code: a line that is neither JSON nor a literal dict is skipped and counted.

An item's text is built as MMRec builds it, one sentence of title, brand (2023:
store), categories and description, joined by spaces; list fields (2014's list of
category paths, 2018/2023's description lists) are flattened, repeated strings
dropped, line breaks made spaces.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from margo_dist.data import io as dio
from margo_dist.errors import DataError

IMAGE_DIM = 4096
ASIN_BYTES = 10
RECORD_BYTES = ASIN_BYTES + 4 * IMAGE_DIM
CHUNK_RECORDS = 256  # .b records read at a time (4 MiB)
SNIFF_LINES = 100  # records whose keys decide a metadata layout
_LINE_LIMIT = 1 << 24  # longest first line read while sniffing
_ASIN_RE = re.compile(rb"^[A-Za-z0-9]{10}")
_SPACE_RE = re.compile(r"\s+")


@dataclass(frozen=True)
class ReviewLayout:
    """Where a review dump keeps the four columns prepare needs."""

    name: str
    user: str
    item: str
    rating: str
    timestamp: str
    types: tuple[pa.DataType, ...] = (pa.string(), pa.string(), pa.float64(), pa.int64())

    @property
    def fields(self) -> tuple[str, str, str, str]:
        return self.user, self.item, self.rating, self.timestamp


@dataclass(frozen=True)
class MetaLayout:
    """An item metadata dump: its id key, the keys that identify it and its text fields."""

    name: str
    key: str
    marks: frozenset[str]
    text_fields: tuple[str, ...]


REVIEWS_MCAULEY = ReviewLayout("Amazon 2014/2018 reviews", "reviewerID", "asin", "overall", "unixReviewTime")
REVIEWS_2023 = ReviewLayout("Amazon 2023 reviews (items by parent_asin, time in ms)", "user_id", "parent_asin",
                            "rating", "timestamp")
META_2023 = MetaLayout("Amazon 2023 metadata", "parent_asin",
                       frozenset({"store", "features", "details", "main_category", "categories"}),
                       ("title", "store", "categories", "description"))
META_2018 = MetaLayout("Amazon 2018 metadata", "asin",
                       frozenset({"category", "feature", "main_cat", "also_buy", "also_view", "rank", "tech1",
                                  "details"}),
                       ("title", "brand", "category", "description"))
META_2014 = MetaLayout("Amazon 2014 metadata", "asin", frozenset({"categories", "imUrl", "salesRank", "related"}),
                       ("title", "brand", "categories", "description"))
_YEAR_2018_KEYS = {"vote", "style", "image", "verified"}


# ---------------------------------------------------------------- records


def parse_record(line: bytes) -> tuple[dict[str, Any] | None, bool]:
    """A line as a dict, and whether it was JSON; ``(None, False)`` when it is neither JSON nor a dict literal.

    The fallback is :func:`ast.literal_eval`, which accepts literals alone (no names,
    calls or attribute access), so a line of code is refused, never run.
    """
    text = line.decode("utf-8", errors="replace").strip()
    try:
        obj = json.loads(text)
        was_json = True
    except ValueError:
        was_json = False
        try:
            obj = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None, False
    return (obj, was_json) if isinstance(obj, dict) else (None, False)


def _lines(fh: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for every non-blank line."""
    for lineno, line in enumerate(fh, start=1):
        if line.strip():
            yield lineno, line


def _open(url: str) -> IO[bytes]:
    if not dio.exists(url):
        raise DataError(f"{url}: file not found")
    try:
        return dio.open_url(url, "rb", compression="infer")
    except (OSError, ValueError) as exc:
        raise DataError(f"{url}: cannot open ({exc})") from exc


def _first_records(url: str, n: int) -> list[tuple[dict[str, Any], bool]]:
    """Up to ``n`` parseable records from the top of ``url`` (a file that is not records gives [])."""
    if not dio.exists(url):
        return []
    found: list[tuple[dict[str, Any], bool]] = []
    try:
        with dio.open_url(url, "rb", compression="infer") as fh:
            for _ in range(n * 2):
                line = fh.readline(_LINE_LIMIT)
                if not line:
                    break
                if not line.lstrip().startswith(b"{"):
                    continue
                rec, was_json = parse_record(line)
                if rec is not None:
                    found.append((rec, was_json))
                    if len(found) >= n:
                        break
    except (OSError, EOFError, ValueError):
        return []
    return found


# ---------------------------------------------------------------- reviews


def detect_reviews(url: str) -> ReviewLayout | None:
    """The review layout of ``url`` from its first record, or None when it is no Amazon review dump."""
    first = _first_records(url, 1)
    if not first:
        return None
    keys = set(first[0][0])
    for layout in (REVIEWS_2023, REVIEWS_MCAULEY):
        if set(layout.fields) <= keys:
            return layout
    return None


def review_year(url: str, layout: ReviewLayout) -> str:
    """'2023', '2018' or '2014' (the log line's label; 2014 and 2018 reviews are read alike)."""
    if layout is REVIEWS_2023:
        return "2023"
    keys = {k for rec, _ in _first_records(url, SNIFF_LINES) for k in rec}
    return "2018" if keys & _YEAR_2018_KEYS else "2014"


def read_reviews(url: str, layout: ReviewLayout) -> dict[str, pa.Array]:
    """The layout's four fields as string columns (nulls where a record lacks one), streamed.

    Arrow's JSON reader keeps only those fields; a file it refuses (a Python literal,
    a value of another type) is read line by line, and a line that is not a record
    is an error naming the line.
    """
    schema = pa.schema(list(zip(layout.fields, layout.types)))
    opts = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        with _open(url) as fh:
            table = pajson.open_json(fh, read_options=pajson.ReadOptions(block_size=1 << 24),
                                     parse_options=opts).read_all()
        return {f: pc.cast(table.column(f).combine_chunks(), pa.string()) for f in layout.fields}
    except pa.ArrowException:
        return _read_reviews_lines(url, layout)


def _read_reviews_lines(url: str, layout: ReviewLayout) -> dict[str, pa.Array]:
    values: dict[str, list[str | None]] = {f: [] for f in layout.fields}
    with _open(url) as fh:
        for lineno, line in _lines(fh):
            rec, _ = parse_record(line)
            if rec is None:
                raise DataError(f"{url} line {lineno}: not a JSON object or a Python dict literal "
                                f"({line[:60]!r}); it was not run")
            for f in layout.fields:
                v = rec.get(f)
                values[f].append(None if v is None else str(v))
    return {f: pa.array(v, type=pa.string()) for f, v in values.items()}


# ---------------------------------------------------------------- metadata


def detect_meta(url: str) -> MetaLayout | None:
    """The metadata layout of ``url`` from the keys of its first records, or None when it is no dump."""
    records = _first_records(url, SNIFF_LINES)
    keys = {k for rec, _ in records for k in rec}
    literal = any(not was_json and META_2014.key in rec for rec, was_json in records)
    for layout in (META_2023, META_2018, META_2014):
        if layout.key in keys and keys & layout.marks:
            return layout
    return META_2014 if literal else None


@dataclass
class ItemTexts:
    """One text per wanted item and modality, and what reading the metadata found."""

    texts: dict[str, list[str]]  # modality -> text per item ('' where none)
    records: int = 0
    skipped: list[int] = field(default_factory=list)  # line numbers of lines that are not a record
    without_id: int = 0
    repeated: int = 0


def read_item_texts(url: str, layout: MetaLayout, item_ids: np.ndarray,
                    groups: dict[str, list[str] | None]) -> ItemTexts:
    """Text per item of ``item_ids`` for each modality of ``groups`` (name -> fields; None: the layout's).

    The file is streamed; only the records of wanted items are kept, the first of
    each id. A line that is neither JSON nor a dict literal is skipped and counted.
    """
    wanted = {str(r): k for k, r in enumerate(item_ids)}
    fields = {name: list(f) if f else list(layout.text_fields) for name, f in groups.items()}
    out = ItemTexts({name: [""] * len(item_ids) for name in fields})
    seen = np.zeros(len(item_ids), dtype=bool)
    with _open(url) as fh:
        for lineno, line in _lines(fh):
            rec, _ = parse_record(line)
            if rec is None:
                out.skipped.append(lineno)
                continue
            out.records += 1
            raw = rec.get(layout.key)
            if raw is None:
                out.without_id += 1
                continue
            k = wanted.get(str(raw).strip())
            if k is None:
                continue
            if seen[k]:
                out.repeated += 1
                continue
            seen[k] = True
            for name, names in fields.items():
                out.texts[name][k] = item_text(rec, names)
    return out


def item_text(rec: dict[str, Any], fields: list[str]) -> str:
    """The named fields of a record as one sentence: flattened, space-joined, whitespace collapsed."""
    parts = (" ".join(dict.fromkeys(_leaves(rec.get(f)))) for f in fields)
    return _SPACE_RE.sub(" ", " ".join(p for p in parts if p)).strip()


def _leaves(value: Any) -> Iterator[str]:
    """A field's strings: lists (of lists) flattened, dicts as 'key value', blanks left out.

    The caller drops repeats, so 2014's category paths [[Baby, Feeding], [Baby, Bottles]]
    give 'Baby Feeding Bottles'.
    """
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _leaves(v)
    elif value is not None and str(value).strip():
        yield str(value).strip()


# ---------------------------------------------------------------- image features


def is_image_binary(url: str) -> bool:
    """Whether ``url`` is McAuley's .b image file: it starts with an ASIN (Parquet starts with ``PAR1``).

    Anything else is left to the Parquet reader, whose error names the file.
    """
    with _open(url) as fh:
        head = fh.read(ASIN_BYTES)
    return not head.startswith(b"PAR1") and _ASIN_RE.match(head) is not None


def read_image_binary(url: str, item_ids: np.ndarray, out_path: str, dim: int = IMAGE_DIM,
                      chunk_records: int = CHUNK_RECORDS) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of a .b file for ``item_ids`` (float32 [n, dim], zero where absent), the found mask, and notes.

    The rows go to a local .npy file at ``out_path`` (written in place, as they are
    read) and come back as a read-only map of it: at 10x Electronics the table is
    10 GB, so memory holds one chunk of ``chunk_records`` records, never the table.
    Rows of other ASINs are dropped as they are read. A file that ends inside a
    record, a non-ASCII ASIN or a non-finite value is an error naming the byte offset.
    """
    rec_bytes = ASIN_BYTES + 4 * dim
    rec_type = np.dtype([("asin", f"S{ASIN_BYTES}"), ("feature", "<f4", (dim,))])
    ids = np.asarray(item_ids).astype(str)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    header = np.lib.format.open_memmap(out_path, mode="w+", dtype="<f4", shape=(len(ids), dim))
    row0 = header.offset  # the rows start after the .npy header; the file is sized (sparse zeros)
    del header
    found = np.zeros(len(ids), dtype=bool)
    offset = n_records = repeated = 0
    with _open(url) as fh, open(out_path, "r+b") as out:
        while True:
            buf = _read_full(fh, rec_bytes * chunk_records)
            whole = len(buf) // rec_bytes * rec_bytes
            if whole != len(buf):
                raise DataError(f"{url}: byte offset {offset + whole}: the file ends inside a record "
                                f"({len(buf) - whole} of {rec_bytes} bytes: a {ASIN_BYTES}-byte ASIN and "
                                f"{dim} float32); truncated download?")
            if not buf:
                break
            chunk = np.frombuffer(buf, dtype=rec_type)
            asins = _asins(chunk["asin"], url, offset, rec_bytes)
            pos = np.minimum(np.searchsorted(sorted_ids, asins), max(len(ids) - 1, 0))
            hit = np.flatnonzero(sorted_ids[pos] == asins) if len(ids) else np.zeros(0, dtype=np.int64)
            finite = np.isfinite(chunk["feature"][hit]).all(axis=1)  # one pass over the chunk's kept rows
            for r, ok in zip(hit, finite):
                k = order[pos[r]]
                if found[k]:
                    repeated += 1
                    continue
                if not ok:
                    raise DataError(f"{url}: byte offset {offset + int(r) * rec_bytes} (ASIN {asins[r]}): "
                                    "a non-finite feature value")
                os.pwrite(out.fileno(), chunk["feature"][r], row0 + int(k) * 4 * dim)  # the row, not a copy
                found[k] = True
            offset += len(buf)
            n_records += len(chunk)
    notes = [f"{url}: {n_records} image records, {int(found.sum())} of them for the {len(ids)} items kept"]
    if repeated:
        notes.append(f"{url}: {repeated} records repeat an ASIN already read; the first of each is used")
    return np.load(out_path, mmap_mode="r"), found, notes


def _read_full(fh: IO[bytes], n: int) -> bytes:
    """``n`` bytes, or fewer only at the end of the file."""
    parts, got = [], 0
    while got < n:
        part = fh.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _asins(raw: np.ndarray, url: str, offset: int, rec_bytes: int) -> np.ndarray:
    """The chunk's ASIN fields as strings; a field that is not ASCII means a misaligned or foreign file."""
    try:
        return np.char.strip(np.char.decode(raw, "ascii"))
    except UnicodeDecodeError:
        bad = next(k for k, a in enumerate(raw) if not a.isascii())
        raise DataError(f"{url}: byte offset {offset + bad * rec_bytes}: ASIN field {raw[bad]!r} is not ASCII; "
                        "not a McAuley image feature file, or its records are misaligned") from None
