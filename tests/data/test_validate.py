"""Every validation rule: the bad file is rejected with file, row and field named."""

from __future__ import annotations

import json
import os
import pickle
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from margo_dist.data.dataset import Dataset
from margo_dist.data.formats import read_dataset, write_dataset
from margo_dist.data.validate import duplicate_rows, find_problems
from margo_dist.errors import DataError

from .helpers import HEADER, IMAGE, ROWS, TEXT, write_mmrec


def write_toy_parquet(folder, arr) -> None:
    write_dataset(Dataset("toy", 4, 5, arr[:, 0], arr[:, 1], arr[:, 2].astype(np.int8), {"image": IMAGE}),
                  str(folder), "parquet")


def inter(folder) -> str:
    return os.path.join(str(folder), "toy.inter")


def bad(folder, *, rows=ROWS, feats=None, header=HEADER, **kw) -> str:
    """The DataError message read_dataset gives for this MMRec folder."""
    write_mmrec(folder, rows, feats, header)
    with pytest.raises(DataError) as exc:
        read_dataset(str(folder), **kw)
    return str(exc.value)


def test_valid_dataset_notes_users_and_items_without_interactions(tmp_path):
    ds = read_dataset(write_mmrec(tmp_path / "d"))
    assert ds.notes == [f"{inter(tmp_path / 'd')}: 1 of 4 users have no interaction (ids 2)",
                        f"{inter(tmp_path / 'd')}: 1 of 5 items have no interaction (ids 4)"]


def test_negative_user_id(tmp_path):
    rows = ROWS[:4] + [(-1, 3, 2)] + ROWS[5:]
    msg = bad(tmp_path / "d", rows=rows)
    assert msg.startswith(f"{inter(tmp_path / 'd')} row 5 (line 6), field userID: user id -1 is outside 0..3")


def test_item_id_beyond_feature_rows(tmp_path):
    rows = ROWS[:6] + [(3, 5, 1), (3, 7, 2)] + ROWS[8:]
    msg = bad(tmp_path / "d", rows=rows)
    assert msg.startswith(f"{inter(tmp_path / 'd')} row 7 (line 8), field itemID: item id 5 is outside 0..4 "
                          "(n_items=5, the feature tables' row count; 2 such rows)")


@pytest.mark.parametrize("value", ["1.5", "abc", ""])
def test_non_integer_id(tmp_path, value):
    rows = ROWS[:2] + [(0, value, 1)] + ROWS[3:]
    msg = bad(tmp_path / "d", rows=rows)
    assert msg == f"{inter(tmp_path / 'd')} row 3 (line 4), field itemID: {value!r} is not an integer (1 such rows)"


def test_wrong_field_count(tmp_path):
    folder = write_mmrec(tmp_path / "d")
    with open(inter(folder), "a") as fh:
        fh.write("1\t2\n")
    with pytest.raises(DataError, match=re.escape(f"{inter(folder)}: row 10 (line 11): 2 tab-separated fields, "
                                                  "header has 3")):
        read_dataset(folder)


def test_parquet_user_id_beyond_meta_n_users(tmp_path):
    arr = np.array(ROWS)
    ds = Dataset("toy", 4, 5, arr[:, 0], arr[:, 1], arr[:, 2].astype(np.int8), {"image": IMAGE})
    write_dataset(ds, str(tmp_path / "pq"), "parquet")
    meta_path = tmp_path / "pq" / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "n_users": 3}))
    with pytest.raises(DataError) as exc:
        read_dataset(str(tmp_path / "pq"), fmt="parquet")
    assert str(exc.value).startswith(f"{tmp_path / 'pq' / 'interactions.parquet'} row 6, field user_id: "
                                     "user id 3 is outside 0..2 (n_users=3; 3 such rows)")


def test_parquet_float_ids(tmp_path):
    arr = np.array(ROWS)
    folder = tmp_path / "pq"
    write_toy_parquet(folder, arr)
    items = arr[:, 1].astype(np.float64)
    items[4] = 2.5
    pq.write_table(pa.table({"user_id": arr[:, 0], "item_id": items, "x_label": arr[:, 2].astype(np.int8)}),
                   folder / "interactions.parquet")
    with pytest.raises(DataError, match=re.escape(
            f"{folder / 'interactions.parquet'}: field item_id has type double; expected integer ids (int64); "
            f"first non-integer value 2.5 at {folder / 'interactions.parquet'} row 5")):
        read_dataset(str(folder), fmt="parquet")


def test_feature_row_counts_disagree(tmp_path):
    msg = bad(tmp_path / "d", feats={"image": IMAGE, "text": np.ones((4, 2), np.float32)})
    d = tmp_path / "d"
    assert msg == (f"feature row counts disagree (n_items=5): {d / 'image_feat.npy'} has 5, "
                   f"{d / 'text_feat.npy'} has 4 rows")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_feature(tmp_path, value):
    text = TEXT.copy()
    text[3, 1] = value
    text[4, 0] = value
    msg = bad(tmp_path / "d", feats={"image": IMAGE, "text": text})
    assert msg.startswith(f"{tmp_path / 'd' / 'text_feat.npy'} (modality 'text') row 4 (item id 3), column 2 of 2: "
                          f"value {value} is not finite (2 non-finite values in all")


def test_float16_overflow_is_reported(tmp_path):
    image = IMAGE.copy()
    image[2, 0] = 1e6
    msg = bad(tmp_path / "d", feats={"image": image}, feature_dtype="float16")
    assert msg.startswith(f"{tmp_path / 'd' / 'image_feat.npy'} (modality 'image') row 3 (item id 2), column 1 of 3: "
                          "value inf is not finite")
    assert "too large for float16" in msg


@pytest.mark.parametrize("label", [3, -1, 300])
def test_label_outside_0_1_2(tmp_path, label):
    rows = ROWS[:7] + [(3, 3, label)] + ROWS[8:]
    msg = bad(tmp_path / "d", rows=rows)
    assert msg == (f"{inter(tmp_path / 'd')} row 8 (line 9), field x_label: x_label={label} is not one of "
                   "0 (train), 1 (valid), 2 (test) (1 such rows)")


def test_duplicate_pairs_rejected(tmp_path):
    rows = ROWS + [(1, 1, 2), (0, 2, 0), (1, 1, 0)]
    msg = bad(tmp_path / "d", rows=rows)
    assert msg.startswith(f"{inter(tmp_path / 'd')} row 10 (line 11), fields userID/itemID: pair (1, 1) repeats "
                          "row 4; 3 duplicate rows in all")


def test_dedupe_keeps_first_occurrence(tmp_path):
    rows = ROWS + [(1, 1, 2), (0, 2, 0), (1, 1, 0)]
    ds = read_dataset(write_mmrec(tmp_path / "d", rows=rows), dedupe=True)
    assert list(zip(ds.user.tolist(), ds.item.tolist(), ds.label.tolist())) == ROWS
    assert ds.notes[0] == (f"{inter(tmp_path / 'd')}: dropped 3 duplicate (user, item) rows, keeping the first "
                           "of each (first dropped: row 10, repeating row 4)")


def test_duplicate_rows_helper():
    user = np.array([5, 1, 5, 1, 5, 2])
    item = np.array([0, 0, 0, 0, 1, 0])
    assert duplicate_rows(user, item).tolist() == [2, 3]
    big = np.array([0, 2**40, 0])
    assert duplicate_rows(big, np.array([2**40, 0, 2**40])).tolist() == [2]


def test_user_without_training_interaction(tmp_path):
    rows = ROWS + [(4, 1, 2), (4, 2, 1), (5, 0, 1)]
    msg = bad(tmp_path / "d", rows=rows)
    assert msg == (f"{inter(tmp_path / 'd')} row 10 (line 11), field userID: 2 users have valid/test interactions "
                   "but none in train (user ids 4, 5); the model cannot score them")


@pytest.mark.parametrize("split,name", [(0, "train"), (1, "valid"), (2, "test")])
def test_empty_split(tmp_path, split, name):
    other = 0 if split != 0 else 1
    rows = [(u, i, other if x == split else x) for u, i, x in ROWS]
    msg = bad(tmp_path / "d", rows=rows)
    assert msg.startswith(f"{inter(tmp_path / 'd')}, field x_label: split {name} (x_label={split}) has no rows")


def test_object_array_refused(tmp_path):
    folder = write_mmrec(tmp_path / "d")
    np.save(os.path.join(folder, "text_feat.npy"), np.array([[1.0, 2.0]] * 5, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=re.escape(f"{folder}/text_feat.npy: holds a pickled object")):
        read_dataset(folder)


def test_pickled_file_refused(tmp_path):
    folder = write_mmrec(tmp_path / "d")
    with open(os.path.join(folder, "image_feat.npy"), "wb") as fh:
        pickle.dump(IMAGE, fh)
    with pytest.raises(DataError, match=re.escape(f"{folder}/image_feat.npy: holds a pickled object")):
        read_dataset(folder)


@pytest.mark.parametrize("shape", [(5,), (5, 3, 1)])
def test_feature_not_2d(tmp_path, shape):
    msg = bad(tmp_path / "d", feats={"image": np.zeros(shape, np.float32)})
    assert msg == f"{tmp_path / 'd' / 'image_feat.npy'}: feature array has shape {shape}; expected 2-D [n_items, dim]"


@pytest.mark.parametrize("missing", ["userID", "itemID", "x_label"])
def test_missing_column(tmp_path, missing):
    header = "\t".join(c if c != missing else "rating" for c in ("userID", "itemID", "x_label"))
    msg = bad(tmp_path / "d", header=header)
    assert msg.startswith(f"{inter(tmp_path / 'd')}: required column {missing!r} is missing from the header")


def test_missing_feature_file(tmp_path):
    msg = bad(tmp_path / "d", modalities=["image", "audio"])
    assert msg == f"{tmp_path / 'd' / 'audio_feat.npy'}: file not found"


def test_missing_inter_file_named(tmp_path):
    msg = bad(tmp_path / "d", name="other")
    assert msg == f"{tmp_path / 'd' / 'other.inter'}: file not found"


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope'}: dataset folder not found")):
        read_dataset(str(tmp_path / "nope"))


@pytest.mark.parametrize("part", ["interactions.parquet", "features/image.parquet"])
def test_missing_parquet_file(tmp_path, part):
    arr = np.array(ROWS)
    folder = tmp_path / "pq"
    write_toy_parquet(folder, arr)
    os.remove(folder / part)
    with pytest.raises(DataError, match=re.escape(f"{folder / part}: file not found")):
        read_dataset(str(folder), fmt="parquet")


def test_missing_parquet_column(tmp_path):
    folder = tmp_path / "pq"
    arr = np.array(ROWS)
    write_toy_parquet(folder, arr)
    pq.write_table(pa.table({"user_id": arr[:, 0], "item": arr[:, 1], "x_label": arr[:, 2]}),
                   folder / "interactions.parquet")
    with pytest.raises(DataError, match=re.escape(f"{folder / 'interactions.parquet'}: required column "
                                                  "'item_id' is missing")):
        read_dataset(str(folder), fmt="parquet")


def test_bad_meta_key(tmp_path):
    folder = tmp_path / "pq"
    arr = np.array(ROWS)
    write_toy_parquet(folder, arr)
    (folder / "meta.json").write_text(json.dumps({"n_users": "four"}))
    with pytest.raises(DataError, match=re.escape(f"{folder / 'meta.json'}: key n_users='four' must be")):
        read_dataset(str(folder), fmt="parquet")


def test_find_problems_reports_every_rule_without_raising():
    user = np.array([0, 0, 1, -2, 1])
    item = np.array([0, 0, 1, 1, 9])
    label = np.array([0, 0, 0, 0, 0], dtype=np.int8)
    ds = Dataset("x", 2, 3, user, item, label, {"a": np.ones((3, 2), np.float32)})
    problems = find_problems(ds, {"interactions": "f.inter"})
    assert problems == [
        "f.inter row 4 (line 5), field userID: user id -2 is outside 0..1 (n_users=2; 1 such rows)",
        "f.inter row 5 (line 6), field itemID: item id 9 is outside 0..2 (n_items=3, the feature tables' row "
        "count; 1 such rows)",
        "f.inter row 2 (line 3), fields userID/itemID: pair (0, 0) repeats row 1; 1 duplicate rows in all "
        "(set data.dedupe=true to keep the first of each)",
        "f.inter, field x_label: split valid (x_label=1), test (x_label=2) has no rows; every split needs "
        "interactions",
    ]
    assert ds.user.tolist() == [0, 0, 1, -2, 1]


def test_blank_line_inside_inter_refused(tmp_path):
    folder = write_mmrec(tmp_path / "d")
    text = open(inter(folder)).read().splitlines()
    with open(inter(folder), "w") as fh:
        fh.write("\n".join(text[:4] + [""] + text[4:]) + "\n\n")
    with pytest.raises(DataError, match=re.escape(f"{inter(folder)}: line 5 is empty")):
        read_dataset(folder)


def test_crlf_bom_and_padding_accepted(tmp_path):
    folder = write_mmrec(tmp_path / "d")
    lines = open(inter(folder)).read().splitlines()
    lines[2] = lines[2].replace("\t", " \t ")
    with open(inter(folder), "wb") as fh:
        fh.write(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    ds = read_dataset(folder)
    assert list(zip(ds.user.tolist(), ds.item.tolist(), ds.label.tolist())) == ROWS
