"""Readers and writers: round trips, MMRec quirks, atomic writes."""

from __future__ import annotations

import json
import os
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from margo_dist.config import DataConfig
from margo_dist.data import formats
from margo_dist.data.dataset import Dataset
from margo_dist.data.formats import convert, read_dataset, read_dataset_cfg, write_dataset
from margo_dist.errors import DataError

from .helpers import IMAGE, ROWS, TEXT, write_mmrec



def toy_dataset() -> Dataset:
    arr = np.array(ROWS, dtype=np.int64)
    return Dataset(name="toy", n_users=4, n_items=5, user=arr[:, 0].copy(), item=arr[:, 1].copy(),
                   label=arr[:, 2].astype(np.int8), features={"image": IMAGE.copy(), "text": TEXT.copy()})


def assert_same(a: Dataset, b: Dataset) -> None:
    assert (a.n_users, a.n_items) == (b.n_users, b.n_items)
    np.testing.assert_array_equal(a.user, b.user)
    np.testing.assert_array_equal(a.item, b.item)
    np.testing.assert_array_equal(a.label, b.label)
    assert list(a.features) == list(b.features)
    for mod in a.features:
        np.testing.assert_array_equal(np.asarray(a.features[mod]), np.asarray(b.features[mod]))


def test_read_mmrec_values(tmp_path):
    ds = read_dataset(write_mmrec(tmp_path / "d"), modalities=["image", "text"])
    assert ds.name == "toy"
    assert (ds.n_users, ds.n_items) == (4, 5)
    assert ds.user.tolist() == [r[0] for r in ROWS]
    assert ds.item.tolist() == [r[1] for r in ROWS]
    assert ds.label.tolist() == [r[2] for r in ROWS]
    assert ds.user.dtype == np.int64 and ds.item.dtype == np.int64 and ds.label.dtype == np.int8
    np.testing.assert_array_equal(ds.features["image"], IMAGE)
    np.testing.assert_array_equal(ds.features["text"], TEXT)
    assert ds.source == str(tmp_path / "d")


def test_extra_columns_and_column_order(tmp_path):
    rows = [(1700000000 + u, i, 5, x, u) for u, i, x in ROWS]
    folder = write_mmrec(tmp_path / "d", rows=rows, header="timestamp\titemID\trating\tx_label\tuserID")
    ds = read_dataset(folder)
    assert ds.user.tolist() == [r[0] for r in ROWS]
    assert ds.item.tolist() == [r[1] for r in ROWS]
    assert ds.label.tolist() == [r[2] for r in ROWS]


def test_modalities_default_to_feature_files_sorted(tmp_path):
    folder = write_mmrec(tmp_path / "d", feats={"text": TEXT, "audio": IMAGE[:, :1], "image": IMAGE})
    assert read_dataset(folder).modalities == ["audio", "image", "text"]
    assert read_dataset(folder, modalities=["text"]).modalities == ["text"]


def test_name_selects_inter_file(tmp_path):
    folder = write_mmrec(tmp_path / "d", name="a")
    write_mmrec(folder, rows=ROWS[:6] + [(0, 4, 1), (1, 4, 2)], name="b")
    with pytest.raises(DataError, match=r"several \*\.inter files \(a\.inter, b\.inter\)") as exc:
        read_dataset(folder)
    assert folder in str(exc.value)
    ds = read_dataset(folder, name="b")
    assert ds.name == "b" and len(ds.user) == 8 and ds.item[-1] == 4


def test_no_inter_file_names_folder(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    np.save(folder / "image_feat.npy", IMAGE)
    with pytest.raises(DataError, match="no \\*\\.inter file") as exc:
        read_dataset(str(folder))
    assert str(folder) in str(exc.value)


@pytest.mark.parametrize("base", ["local", "memory"])
def test_round_trip_mmrec_parquet_mmrec(tmp_path, base):
    root = str(tmp_path) if base == "local" else f"memory://rt-{uuid.uuid4().hex}"
    src = write_mmrec(tmp_path / "src")
    first = read_dataset(src)
    convert(src, f"{root}/pq", dst_fmt="parquet")
    mid = read_dataset(f"{root}/pq", fmt="parquet")
    assert mid.name == "toy"
    assert_same(first, mid)
    write_dataset(mid, f"{root}/mm", "mmrec")
    last = read_dataset(f"{root}/mm")
    assert last.name == "toy"
    assert_same(first, last)
    fs, path = fsspec.core.url_to_fs(f"{root}/pq")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.find(path)) == [
        "image.parquet", "interactions.parquet", "meta.json", "text.parquet"]
    with fs.open(f"{path}/meta.json") as fh:
        assert json.load(fh) == {"name": "toy", "n_users": 4, "n_items": 5, "modalities": ["image", "text"]}
    with fs.open(f"{fs_and(root, 'mm')}/toy.inter", "rb") as fh:
        lines = fh.read().decode().splitlines()
    assert lines[0] == "userID\titemID\tx_label"
    assert lines[1:] == [f"{u}\t{i}\t{x}" for u, i, x in ROWS]
    if base == "memory":
        fs.rm(fsspec.core.url_to_fs(root)[1], recursive=True)


def fs_and(root: str, sub: str) -> str:
    return fsspec.core.url_to_fs(f"{root}/{sub}")[1]


def test_parquet_schema_written(tmp_path):
    write_dataset(toy_dataset(), str(tmp_path / "pq"), "parquet")
    inter = pq.read_table(tmp_path / "pq" / "interactions.parquet")
    assert inter.schema.field("user_id").type == pa.int64()
    assert inter.schema.field("item_id").type == pa.int64()
    assert inter.schema.field("x_label").type == pa.int8()
    feat = pq.read_table(tmp_path / "pq" / "features" / "text.parquet")
    assert feat.schema.field("feature").type == pa.list_(pa.float32(), 2)
    assert feat.column("item_id").to_pylist() == [0, 1, 2, 3, 4]
    assert feat.column("feature").to_pylist()[1] == [-0.25, -0.375]


def test_parquet_meta_n_users_overrides(tmp_path):
    write_dataset(toy_dataset(), str(tmp_path / "pq"), "parquet")
    meta = json.loads((tmp_path / "pq" / "meta.json").read_text())
    meta["n_users"] = 7
    (tmp_path / "pq" / "meta.json").write_text(json.dumps(meta))
    ds = read_dataset(str(tmp_path / "pq"), fmt="parquet")
    assert ds.n_users == 7
    assert any("4 of 7 users have no interaction (ids 2, 4, 5, 6)" in n for n in ds.notes)


def test_float16_features(tmp_path):
    src = write_mmrec(tmp_path / "src")
    ds = read_dataset(src, feature_dtype="float16")
    assert ds.features["image"].dtype == np.float16
    np.testing.assert_array_equal(ds.features["image"], IMAGE.astype(np.float16))
    write_dataset(ds, str(tmp_path / "pq"), "parquet")
    feat = pq.read_table(tmp_path / "pq" / "features" / "image.parquet")
    assert feat.schema.field("feature").type == pa.list_(pa.float16(), 3)
    back = read_dataset(str(tmp_path / "pq"), fmt="parquet", feature_dtype="float16")
    np.testing.assert_array_equal(back.features["image"], IMAGE.astype(np.float16))
    as32 = read_dataset(str(tmp_path / "pq"), fmt="parquet")
    assert as32.features["image"].dtype == np.float32


def test_mmap_maps_local_features(tmp_path):
    ds = read_dataset(write_mmrec(tmp_path / "d"), mmap=True)
    assert isinstance(ds.features["image"], np.memmap)
    np.testing.assert_array_equal(ds.features["image"], IMAGE)


def test_read_dataset_cfg(tmp_path):
    folder = write_mmrec(tmp_path / "d", feats={"image": IMAGE, "text": TEXT, "audio": IMAGE})
    cfg = DataConfig(path=folder, format="mmrec", modalities=["text"], feature_dtype="float16")
    ds = read_dataset_cfg(cfg)
    assert ds.modalities == ["text"]
    assert ds.features["text"].dtype == np.float16


def test_extra_files_written(tmp_path):
    out = str(tmp_path / "out")
    write_dataset(toy_dataset(), out, "mmrec", extra={"user_map.tsv": b"a\t0\n", "maps/item_map.tsv": b"x\t1\n"})
    assert (tmp_path / "out" / "user_map.tsv").read_bytes() == b"a\t0\n"
    assert (tmp_path / "out" / "maps" / "item_map.tsv").read_bytes() == b"x\t1\n"
    assert sorted(os.listdir(tmp_path / "out")) == ["image_feat.npy", "maps", "text_feat.npy", "toy.inter",
                                                    "user_map.tsv"]


@pytest.mark.parametrize("fmt", ["mmrec", "parquet"])
def test_failed_write_leaves_no_folder(tmp_path, fmt):
    ds = toy_dataset()
    ds.features["text"] = np.zeros((3, 2), dtype=np.float32)  # wrong row count, written second
    with pytest.raises(DataError, match=r"modality 'text': feature shape \(3, 2\); expected \[5, dim\]"):
        write_dataset(ds, str(tmp_path / "out"), fmt)
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_previous_folder(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    write_dataset(toy_dataset(), out, "parquet")
    before = sorted(os.listdir(out))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(formats, "_write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(toy_dataset(), out, "parquet")
    assert os.listdir(tmp_path) == ["out"]
    assert sorted(os.listdir(out)) == before
    assert_same(read_dataset(out, fmt="parquet"), toy_dataset())


def test_failed_write_memory_leaves_nothing(monkeypatch):
    root = f"memory://fail-{uuid.uuid4().hex}"

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(formats, "_write_extra", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_dataset(toy_dataset(), f"{root}/out", "mmrec", extra={"m.tsv": b""})
    fs, path = fsspec.core.url_to_fs(root)
    assert not fs.exists(f"{path}/out")
    assert fs.find(path, withdirs=True) == [path]  # the parent only: no temporary folder left


def test_parquet_item_ids_must_be_in_order(tmp_path):
    out = tmp_path / "pq"
    write_dataset(toy_dataset(), str(out), "parquet")
    table = pa.table({"item_id": pa.array([0, 1, 3, 2, 4], pa.int64()),
                      "feature": pa.FixedSizeListArray.from_arrays(pa.array(TEXT.reshape(-1)), 2)})
    pq.write_table(table, out / "features" / "text.parquet")
    with pytest.raises(DataError, match=r"text\.parquet row 3, field item_id: 3 but item ids must be 0\.\.4"):
        read_dataset(str(out), fmt="parquet")


def test_parquet_feature_must_be_fixed_size_list(tmp_path):
    out = tmp_path / "pq"
    write_dataset(toy_dataset(), str(out), "parquet")
    table = pa.table({"item_id": pa.array(range(5), pa.int64()), "feature": pa.array([[0.5, 1.0]] * 5)})
    pq.write_table(table, out / "features" / "text.parquet")
    with pytest.raises(DataError,
                       match=r"text\.parquet: field feature has type list<\w+: double>; expected fixed_size_list"):
        read_dataset(str(out), fmt="parquet")


def test_parquet_feature_matrix_fixed_and_variable_lists():
    def name(idx):
        return f"f row {idx + 1}"

    fixed = pa.chunked_array([pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, 3.0, 4.0], pa.float16()), 2)])
    got = formats.parquet_feature_matrix(fixed, "f", name)
    assert got.dtype == np.float16 and got.tolist() == [[1, 2], [3, 4]]
    ragged = pa.chunked_array([pa.array([[1, 2], [3, 4]]), pa.array([[5, 6]])])
    with pytest.raises(DataError, match=r"f: field feature has type list<item: int64>; expected fixed_size_list"):
        formats.parquet_feature_matrix(ragged, "f", name)
    assert formats.parquet_feature_matrix(ragged, "f", name, fixed_size=False).tolist() == [[1, 2], [3, 4], [5, 6]]
    with pytest.raises(DataError, match=r"f row 2, field feature: length 1, row 1 has 2"):
        formats.parquet_feature_matrix(pa.chunked_array([pa.array([[1.0, 2.0], [1.0]])]), "f", name, fixed_size=False)
    with pytest.raises(DataError, match=r"f row 2, field feature: missing vector \(1 such rows\)"):
        formats.parquet_feature_matrix(pa.chunked_array([pa.array([[1.0], None])]), "f", name, fixed_size=False)
    with pytest.raises(DataError, match=r"f row 2, field feature, column 1: missing value"):
        formats.parquet_feature_matrix(pa.chunked_array([pa.array([[1.0, 2.0], [None, 3.0]])]), "f", name,
                                       fixed_size=False)


@pytest.mark.parametrize("tail", ["", "\n", "\n\n"])
def test_an_inter_file_with_a_header_only_is_named(tmp_path, tail):
    folder = write_mmrec(tmp_path / "d", rows=[])
    inter = os.path.join(folder, "toy.inter")
    with open(inter, "w") as fh:
        fh.write("userID\titemID\tx_label" + tail)
    with pytest.raises(DataError, match=rf"^{inter} has a header but no interactions"):
        read_dataset(folder)


def test_an_empty_inter_file_is_named(tmp_path):
    folder = write_mmrec(tmp_path / "d", rows=[])
    inter = os.path.join(folder, "toy.inter")
    open(inter, "w").close()
    with pytest.raises(DataError, match=rf"^{inter}: the file is empty; expected a header line"):
        read_dataset(folder)
