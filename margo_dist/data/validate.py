"""The rules a dataset must pass before any training starts.

Every rule raises :class:`DataError` whose message names the file, the row and the
field. Readers keep file order, so array index ``i`` is data row ``i + 1`` of the
interactions file (line ``i + 2`` of an MMRec .inter, after its header) and row
``i + 1`` of a feature table is item id ``i``. Findings that do not stop training
(users or items without any interaction, dropped duplicates) go to ``ds.notes``.

``files`` maps :data:`INTERACTIONS`, :data:`META`, ``feature_key(modality)`` and
``presence_key(modality)`` to the URL each part was read from; a missing key falls back
to a descriptive placeholder.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from margo_dist.data.dataset import SPLIT_NAMES, TEST, TRAIN, VALID, Dataset, pair_codes
from margo_dist.errors import DataError

INTERACTIONS = "interactions"
META = "meta"
_FEATURE_PREFIX = "features/"
_PRESENCE_PREFIX = "present/"
_BLOCK_ROWS = 65536
_SHOW_IDS = 5


def feature_key(modality: str) -> str:
    """The ``files`` key of a modality's feature table."""
    return f"{_FEATURE_PREFIX}{modality}"


def presence_key(modality: str) -> str:
    """The ``files`` key of a modality's presence mask."""
    return f"{_PRESENCE_PREFIX}{modality}"


def row_ref(url: str, idx: int) -> str:
    """``file row N`` for 0-based array index ``idx`` (.inter files also give the line)."""
    if url.endswith(".inter"):
        return f"{url} row {idx + 1} (line {idx + 2})"
    return f"{url} row {idx + 1}"


def _inter_file(files: dict[str, str]) -> str:
    return files.get(INTERACTIONS, "<interactions>")


def _feat_file(files: dict[str, str], mod: str) -> str:
    return files.get(feature_key(mod), f"<features of modality {mod!r}>")


def _field(files: dict[str, str], kind: str) -> str:
    """Column name of ``kind`` (user | item | label) in the interactions file's layout."""
    mmrec = _inter_file(files).endswith(".inter")
    return {"user": "userID" if mmrec else "user_id", "item": "itemID" if mmrec else "item_id",
            "label": "x_label"}[kind]


def _ids(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in values[:_SHOW_IDS])
    return shown + (", ..." if len(values) > _SHOW_IDS else "")


def check_features(ds: Dataset, files: dict[str, str]) -> None:
    """Every table is 2-D with n_items rows (all modalities agree) and finite values."""
    if not ds.features:
        raise DataError(f"{_inter_file(files)}: dataset {ds.name!r} has no feature table")
    for mod, feat in ds.features.items():
        url = _feat_file(files, mod)
        if feat.ndim != 2:
            raise DataError(f"{url}: feature array has shape {feat.shape}; expected 2-D [n_items, dim]")
    counts = {mod: feat.shape[0] for mod, feat in ds.features.items()}
    if len(set(counts.values())) > 1 or next(iter(counts.values())) != ds.n_items:
        listed = ", ".join(f"{_feat_file(files, m)} has {c}" for m, c in counts.items())
        raise DataError(f"feature row counts disagree (n_items={ds.n_items}): {listed} rows")
    for mod, feat in ds.features.items():
        _check_finite(feat, _feat_file(files, mod), mod)


def _check_finite(feat: np.ndarray, url: str, mod: str) -> None:
    first: tuple[int, int, float] | None = None
    n_bad = 0
    for start in range(0, feat.shape[0], _BLOCK_ROWS):
        block = np.asarray(feat[start:start + _BLOCK_ROWS])
        bad = ~np.isfinite(block)
        if bad.any():
            n_bad += int(bad.sum())
            if first is None:
                r, c = np.argwhere(bad)[0]
                first = (start + int(r), int(c), float(block[r, c]))
    if first is not None:
        row, col, value = first
        raise DataError(f"{url} (modality {mod!r}) row {row + 1} (item id {row}), column {col + 1} of "
                        f"{feat.shape[1]}: value {value} is not finite ({n_bad} non-finite values in all; "
                        f"a value too large for {feat.dtype} also becomes inf)")


def check_presence(ds: Dataset, files: dict[str, str]) -> None:
    """Presence masks are bool [n_items] of a known modality, a missing row is zeros, and no
    item misses every modality (it would have no content at all). Needs valid feature tables."""
    for mod, raw_mask in ds.present.items():
        mask = np.asarray(raw_mask)
        url = files.get(presence_key(mod), f"<presence of modality {mod!r}>")
        if mod not in ds.features:
            raise DataError(f"{url}: presence of modality {mod!r}, which has no feature table")
        if mask.dtype != np.bool_ or mask.shape != (ds.n_items,):
            raise DataError(f"{url} (modality {mod!r}): presence mask {mask.dtype} {mask.shape}; "
                            f"expected bool ({ds.n_items},)")
        missing = np.flatnonzero(~mask)
        nonzero = missing[np.asarray(ds.features[mod][missing]).any(axis=1)] if len(missing) else missing
        if len(nonzero):
            raise DataError(f"{_feat_file(files, mod)} (modality {mod!r}) row {int(nonzero[0]) + 1} (item id "
                            f"{int(nonzero[0])}): marked missing in {url} but not zero ({len(nonzero)} such rows)")
    if not ds.present:
        return
    none = np.ones(ds.n_items, dtype=bool)
    for mod in ds.features:
        none &= ~ds.presence(mod)
    lacking = np.flatnonzero(none)
    if len(lacking):
        listed = ", ".join(files.get(presence_key(m), m) for m in ds.present)
        raise DataError(f"{listed}: {len(lacking)} items have no feature in any modality "
                        f"(item ids {_ids(lacking)}); every item needs at least one")


def check_labels(ds: Dataset, files: dict[str, str]) -> None:
    """x_label is 0 (train), 1 (valid) or 2 (test) on every row."""
    bad = np.flatnonzero((ds.label < TRAIN) | (ds.label > TEST))
    if len(bad):
        idx = int(bad[0])
        raise DataError(f"{row_ref(_inter_file(files), idx)}, field {_field(files, 'label')}: "
                        f"x_label={int(ds.label[idx])} is not one of 0 (train), 1 (valid), 2 (test) "
                        f"({len(bad)} such rows)")


def check_ids(ds: Dataset, files: dict[str, str]) -> None:
    """User ids in 0..n_users-1 and item ids in 0..n_items-1 (n_items: feature rows)."""
    check_user_ids(ds, files)
    check_item_ids(ds, files)


def check_user_ids(ds: Dataset, files: dict[str, str]) -> None:
    """User ids in 0..n_users-1."""
    _check_id_range(ds, files, "user", ds.user, ds.n_users, f"n_users={ds.n_users}")


def check_item_ids(ds: Dataset, files: dict[str, str]) -> None:
    """Item ids in 0..n_items-1, n_items being the feature tables' row count."""
    _check_id_range(ds, files, "item", ds.item, ds.n_items, f"n_items={ds.n_items}, the feature tables' row count")


def _check_id_range(ds: Dataset, files: dict[str, str], kind: str, values: np.ndarray, n: int,
                    origin: str) -> None:
    if len(values) != len(ds.label):
        raise DataError(f"{_inter_file(files)}: user/item/label columns have lengths "
                        f"{len(ds.user)}/{len(ds.item)}/{len(ds.label)}")
    if values.dtype.kind not in "iu":
        raise DataError(f"{_inter_file(files)}, field {_field(files, kind)}: ids have dtype "
                        f"{values.dtype}; expected integers")
    bad = np.flatnonzero((values < 0) | (values >= n))
    if len(bad):
        idx = int(bad[0])
        raise DataError(f"{row_ref(_inter_file(files), idx)}, field {_field(files, kind)}: {kind} id "
                        f"{int(values[idx])} is outside 0..{n - 1} ({origin}; {len(bad)} such rows)")


def duplicate_rows(user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Sorted indices of rows whose (user, item) pair occurred on an earlier row."""
    if len(user) < 2:
        return np.zeros(0, dtype=np.int64)
    key = _pair_key(user, item)
    if key is not None:
        sorted_key = np.sort(key)
        if not (sorted_key[1:] == sorted_key[:-1]).any():
            return np.zeros(0, dtype=np.int64)
        order = np.argsort(key, kind="stable")
        sk = key[order]
        same = sk[1:] == sk[:-1]
    else:
        order = np.lexsort((np.arange(len(user)), item, user))
        su, si = user[order], item[order]
        same = (su[1:] == su[:-1]) & (si[1:] == si[:-1])
    return np.sort(order[1:][same])


def _pair_key(user: np.ndarray, item: np.ndarray) -> np.ndarray | None:
    """One int64 per (user, item) pair, or None when the id ranges are too wide for that."""
    u0, i0 = int(user.min()), int(item.min())
    span_u, span_i = int(user.max()) - u0 + 1, int(item.max()) - i0 + 1
    if span_u * span_i >= 2**62:
        return None
    return pair_codes(user.astype(np.int64) - u0, item.astype(np.int64) - i0, span_i)


def check_duplicates(ds: Dataset, files: dict[str, str], dedupe: bool = False) -> None:
    """No (user, item) pair twice, across all splits; ``dedupe`` keeps the first occurrence."""
    dup = duplicate_rows(ds.user, ds.item)
    if not len(dup):
        return
    idx = int(dup[0])
    same = np.flatnonzero((ds.user[:idx] == ds.user[idx]) & (ds.item[:idx] == ds.item[idx]))
    first = int(same[0]) if len(same) else idx
    url = _inter_file(files)
    if not dedupe:
        raise DataError(f"{row_ref(url, idx)}, fields {_field(files, 'user')}/{_field(files, 'item')}: "
                        f"pair ({int(ds.user[idx])}, {int(ds.item[idx])}) repeats row {first + 1}; "
                        f"{len(dup)} duplicate rows in all (set data.dedupe=true to keep the first of each)")
    keep = np.ones(len(ds.user), dtype=bool)
    keep[dup] = False
    ds.user, ds.item, ds.label = ds.user[keep], ds.item[keep], ds.label[keep]
    ds.notes.append(f"{url}: dropped {len(dup)} duplicate (user, item) rows, keeping the first of each "
                    f"(first dropped: row {idx + 1}, repeating row {first + 1})")


def check_splits(ds: Dataset, files: dict[str, str]) -> None:
    """Train, valid and test each have at least one row."""
    label = ds.label.astype(np.int64)
    counts = np.bincount(label[(label >= TRAIN) & (label <= TEST)], minlength=3)
    empty = [f"{SPLIT_NAMES[s]} (x_label={s})" for s in (TRAIN, VALID, TEST) if counts[s] == 0]
    if empty:
        raise DataError(f"{_inter_file(files)}, field {_field(files, 'label')}: split "
                        f"{', '.join(empty)} has no rows; every split needs interactions")


def check_train_coverage(ds: Dataset, files: dict[str, str]) -> None:
    """Every user with a valid/test interaction also has a training one."""
    train = ds.label == TRAIN
    if len(ds.user) == 0 or (ds.user.min() >= 0 and ds.user.max() < ds.n_users):
        has_train = np.bincount(ds.user[train], minlength=ds.n_users) > 0
        has_eval = np.bincount(ds.user[~train], minlength=ds.n_users) > 0
        lacking = np.flatnonzero(has_eval & ~has_train)
    else:
        lacking = np.setdiff1d(np.unique(ds.user[~train]), np.unique(ds.user[train]))
    eval_mask = ~train
    if len(lacking):
        rows = np.flatnonzero(eval_mask & np.isin(ds.user, lacking))
        raise DataError(f"{row_ref(_inter_file(files), int(rows[0]))}, field {_field(files, 'user')}: "
                        f"{len(lacking)} users have valid/test interactions but none in train "
                        f"(user ids {_ids(lacking)}); the model cannot score them")


def add_coverage_notes(ds: Dataset, files: dict[str, str]) -> None:
    """Note users and items with no interaction at all (allowed, but worth knowing)."""
    for kind, values, n in (("users", ds.user, ds.n_users), ("items", ds.item, ds.n_items)):
        absent = np.flatnonzero(np.bincount(values, minlength=n) == 0)
        if len(absent):
            ds.notes.append(f"{_inter_file(files)}: {len(absent)} of {n} {kind} have no interaction "
                            f"(ids {_ids(absent)})")


def validate(ds: Dataset, files: dict[str, str] | None = None, dedupe: bool = False) -> None:
    """Run every rule in order; the first failure raises. ``dedupe`` edits ``ds`` in place."""
    files = files or {}
    check_features(ds, files)
    check_presence(ds, files)
    check_labels(ds, files)
    check_ids(ds, files)
    check_duplicates(ds, files, dedupe=dedupe)
    check_splits(ds, files)
    check_train_coverage(ds, files)
    add_coverage_notes(ds, files)


def find_problems(ds: Dataset, files: dict[str, str] | None = None) -> list[str]:
    """Every rule's failure message (no raise), for reporting; ``ds`` is not changed.

    The train-coverage check needs valid labels, so it is skipped when they fail.
    """
    files = files or {}
    problems: list[str] = []

    def run(check: Callable[[Dataset, dict[str, str]], None]) -> bool:
        try:
            check(ds, files)
        except DataError as exc:
            problems.append(str(exc))
            return False
        return True

    if run(check_features):
        run(check_presence)
    labels_ok = run(check_labels)
    run(check_user_ids)
    run(check_item_ids)
    run(check_duplicates)
    run(check_splits)
    if labels_ok:
        run(check_train_coverage)
    return problems
