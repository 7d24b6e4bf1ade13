"""Inspection numbers on a hand-made dataset, and problems reported as text."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from margo_dist.data.dataset import Dataset
from margo_dist.data.inspect import dataset_stats, format_stats, inspect_path

from .helpers import ROWS, write_mmrec


def test_stats_of_valid_dataset(tmp_path):
    folder = write_mmrec(tmp_path / "d")
    stats, problems = inspect_path(folder, "mmrec", "", None)
    assert problems == []
    inter = os.path.join(folder, "toy.inter")
    assert stats == {
        "name": "toy",
        "source": folder,
        "users": 4,
        "items": 5,
        "interactions": 9,
        "splits": {"train": 5, "valid": 2, "test": 2},
        "other_labels": 0,
        "sparsity": pytest.approx(1 - 9 / 20),
        "interactions_per_user": pytest.approx(9 / 4),
        "interactions_per_item": pytest.approx(9 / 5),
        "modalities": {"image": {"rows": 5, "dim": 3, "dtype": "float32"},
                       "text": {"rows": 5, "dim": 2, "dtype": "float32"}},
        "users_without_interactions": 1,
        "items_without_interactions": 1,
        "users_without_train": 0,
        "items_without_train": 3,
        "duplicates": 0,
        "notes": [f"{inter}: 1 of 4 users have no interaction (ids 2)",
                  f"{inter}: 1 of 5 items have no interaction (ids 4)"],
    }


def test_format_stats_table(tmp_path):
    stats, _ = inspect_path(write_mmrec(tmp_path / "d"), "mmrec", "", ["text"])
    lines = format_stats(stats).splitlines()

    def value(label: str) -> str:
        hits = [ln for ln in lines if re.match(rf"{re.escape(label)}\s{{2,}}", ln)]
        assert len(hits) == 1, (label, lines)
        return hits[0][len(label):].strip()

    assert value("users") == "4"
    assert value("interactions") == "9"
    assert value("  train") == "5 (55.6%)"
    assert value("  valid") == "2 (22.2%)"
    assert value("  test") == "2 (22.2%)"
    assert value("sparsity") == "0.550000"
    assert value("interactions / user") == "2.25"
    assert value("items without train interactions") == "3"
    assert value("modality text") == "5 x 2 float32"
    assert not any(ln.startswith("modality image") for ln in lines)
    assert lines[-1].startswith("note: ") and lines[-1].endswith("1 of 5 items have no interaction (ids 4)")
    column = lines[2].index("4")  # the value column, from the "users" row
    table = [ln for ln in lines if not ln.startswith("note:")]
    assert all(ln[column - 2:column] == "  " and ln[column] != " " for ln in table)


def test_problems_reported_with_stats(tmp_path):
    rows = ROWS + [(1, 1, 2), (0, 4, 5)]
    folder = write_mmrec(tmp_path / "d", rows=rows)
    stats, problems = inspect_path(folder, "mmrec", "", None)
    inter = os.path.join(folder, "toy.inter")
    assert problems == [
        f"{inter} row 11 (line 12), field x_label: x_label=5 is not one of 0 (train), 1 (valid), 2 (test) "
        "(1 such rows)",
        f"{inter} row 10 (line 11), fields userID/itemID: pair (1, 1) repeats row 4; 1 duplicate rows in all "
        "(set data.dedupe=true to keep the first of each)",
    ]
    assert stats["interactions"] == 11
    assert stats["splits"] == {"train": 5, "valid": 2, "test": 3}
    assert stats["other_labels"] == 1
    assert stats["duplicates"] == 1
    assert stats["items_without_interactions"] == 0
    assert stats["notes"] == []
    assert "  other x_label" in format_stats(stats)


def test_unparseable_dataset_gives_problem_not_traceback(tmp_path):
    folder = write_mmrec(tmp_path / "d", header="user\titemID\tx_label")
    stats, problems = inspect_path(folder, "mmrec", "", None)
    assert stats == {}
    assert problems == [f"{os.path.join(folder, 'toy.inter')}: required column 'userID' is missing from the "
                        "header (found ['user', 'itemID', 'x_label']); the file must be tab separated"]
    assert format_stats(stats) == "no statistics: the dataset could not be parsed"
    stats, problems = inspect_path(str(tmp_path / "none"), "parquet", "", None)
    assert stats == {} and problems == [f"{tmp_path / 'none'}: dataset folder not found"]


def test_dataset_stats_tolerates_out_of_range_ids():
    ds = Dataset("x", 2, 3, np.array([0, 5, 1, 0]), np.array([0, 1, -1, 2]), np.array([0, 0, 1, 2], np.int8),
                 {"a": np.zeros((3, 4), np.float16)})
    stats = dataset_stats(ds)
    assert stats["users_without_interactions"] == 0  # users 0 and 1 occur
    assert stats["items_without_interactions"] == 0  # items 0, 1, 2 occur (5 and -1 ignored)
    assert stats["users_without_train"] == 1  # user 1 only in valid
    assert stats["items_without_train"] == 1  # item 2 only in test
    assert stats["modalities"] == {"a": {"rows": 3, "dim": 4, "dtype": "float16"}}
    assert stats["sparsity"] == pytest.approx(1 - 4 / 6)
