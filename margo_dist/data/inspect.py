"""Dataset statistics and problems, for ``margo-dist data inspect``.

Inspection reports rather than stops: a dataset that parses gets its statistics
together with every validation failure as a line of text, so one look shows all
that needs fixing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from margo_dist.data.dataset import SPLIT_NAMES, TEST, TRAIN, VALID, Dataset
from margo_dist.data.formats import load_dataset
from margo_dist.data.validate import add_coverage_notes, duplicate_rows, find_problems
from margo_dist.errors import MargoError


def _present(values: np.ndarray, n: int) -> np.ndarray:
    """Bool [n]: which ids in 0..n-1 occur in ``values`` (out-of-range ids ignored)."""
    seen = np.zeros(max(n, 0), dtype=bool)
    ok = values[(values >= 0) & (values < n)]
    seen[ok] = True
    return seen


def _modality_stats(ds: Dataset, mod: str) -> dict[str, Any]:
    """Shape and dtype of a feature table, and ``missing`` (items without the feature) when recorded."""
    f = ds.features[mod]
    info: dict[str, Any] = {"rows": int(f.shape[0]) if f.ndim else 0, "dim": int(f.shape[1]) if f.ndim == 2 else -1,
                            "dtype": str(f.dtype)}
    mask = ds.present.get(mod)
    if mask is not None:
        info["missing"] = int(np.size(mask) - np.count_nonzero(mask))
    return info


def dataset_stats(ds: Dataset) -> dict[str, Any]:
    """Sizes, split counts, sparsity, feature shapes, coverage and duplicates of ``ds``.

    Tolerates data that fails validation (out-of-range ids are left out of the
    coverage counts), so inspection can show numbers next to the problems.
    """
    n = int(len(ds.user))
    label = ds.label.astype(np.int64)
    cells = ds.n_users * ds.n_items
    train = label == TRAIN
    users_any = _present(ds.user, ds.n_users)
    items_any = _present(ds.item, ds.n_items)
    return {
        "name": ds.name,
        "source": ds.source,
        "users": int(ds.n_users),
        "items": int(ds.n_items),
        "interactions": n,
        "splits": {SPLIT_NAMES[s]: int((label == s).sum()) for s in (TRAIN, VALID, TEST)},
        "other_labels": int(((label < TRAIN) | (label > TEST)).sum()),
        "sparsity": float(1.0 - n / cells) if cells > 0 else float("nan"),
        "interactions_per_user": float(n / ds.n_users) if ds.n_users > 0 else 0.0,
        "interactions_per_item": float(n / ds.n_items) if ds.n_items > 0 else 0.0,
        "modalities": {mod: _modality_stats(ds, mod) for mod in ds.features},
        "users_without_interactions": int((~users_any).sum()),
        "items_without_interactions": int((~items_any).sum()),
        "users_without_train": int((~_present(ds.user[train], ds.n_users) & users_any).sum()),
        "items_without_train": int((~_present(ds.item[train], ds.n_items)).sum()),
        "duplicates": int(len(duplicate_rows(ds.user, ds.item))),
        "notes": list(ds.notes),
    }


_LABELS = [
    ("name", "name"), ("source", "source"), ("users", "users"), ("items", "items"),
    ("interactions", "interactions"), ("sparsity", "sparsity"),
    ("interactions_per_user", "interactions / user"), ("interactions_per_item", "interactions / item"),
    ("users_without_interactions", "users without interactions"),
    ("items_without_interactions", "items without interactions"),
    ("users_without_train", "users with valid/test but no train"),
    ("items_without_train", "items without train interactions"),
    ("duplicates", "duplicate (user, item) rows"),
]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def format_stats(stats: dict[str, Any]) -> str:
    """A two-column table of :func:`dataset_stats` output."""
    if not stats:
        return "no statistics: the dataset could not be parsed"
    rows: list[tuple[str, str]] = []
    for key, label in _LABELS:
        if key in stats:
            rows.append((label, _fmt(stats[key])))
        if key == "interactions":
            for split, count in stats.get("splits", {}).items():
                share = count / stats["interactions"] if stats["interactions"] else 0.0
                rows.append((f"  {split}", f"{count} ({share:.1%})"))
            if stats.get("other_labels"):
                rows.append(("  other x_label", str(stats["other_labels"])))
    for mod, info in stats.get("modalities", {}).items():
        missing = f", {info['missing']} items missing" if "missing" in info else ""
        rows.append((f"modality {mod}", f"{info['rows']} x {info['dim']} {info['dtype']}{missing}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{label.ljust(width)}  {value}" for label, value in rows]
    lines += [f"note: {note}" for note in stats.get("notes", [])]
    return "\n".join(lines)


def inspect_path(url: str, fmt: str = "mmrec", name: str = "",
                 modalities: list[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Statistics and validation problems of the dataset at ``url``.

    A file that cannot be parsed gives empty statistics and its error as the one
    problem; otherwise every failing rule is one problem string.
    """
    try:
        ds, files = load_dataset(url, fmt, modalities, name)
    except MargoError as exc:
        return {}, [str(exc)]
    problems = find_problems(ds, files)
    if not problems:
        add_coverage_notes(ds, files)
    return dataset_stats(ds), problems
