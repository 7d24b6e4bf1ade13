"""The public Amazon dumps (2014, 2018, 2023) through prepare, inspect and a short training run.

Every fixture is written here, gzip-compressed like the published files: eight
reviewers, eight items (ASIN-shaped ids) and one item too rare for the 5-core.
"""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from margo_dist.cli import main
from margo_dist.config import load_config
from margo_dist.data import dumps, formats
from margo_dist.data.formats import convert, read_dataset
from margo_dist.data.inspect import format_stats, inspect_path
from margo_dist.data.prepare import prepare
from margo_dist.data.text_encoder import encode_texts
from margo_dist.errors import DataError

USERS = [f"A{u:03d}XYZ" for u in range(8)]
ITEMS = [f"B{i:09d}" for i in range(8)]
RARE = "B00000RARE"  # one review: dropped by the 5-core
FOREIGN = "B999999999"  # in the image file only


def pairs():
    """(user, item, k) of every review: most of the 8 x 8 block, plus one of the rare item."""
    out = [(u, i) for u in range(8) for i in range(8) if (u + i) % 7 != 3]
    return [(USERS[u], ITEMS[i], k) for k, (u, i) in enumerate(out)] + [(USERS[0], RARE, len(out))]


def write_lines(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in lines)
    return str(path)


def reviews_2014(path):
    return write_lines(path, [json.dumps({
        "reviewerID": u, "asin": i, "reviewerName": "Pat", "helpful": [0, 0], "reviewText": "Nice.",
        "overall": float(1 + k % 5), "summary": "ok", "unixReviewTime": 1_300_000_000 + k,
        "reviewTime": "03 13, 2011"}) for u, i, k in pairs()])


def reviews_2018(path):
    lines = []
    for u, i, k in pairs():
        rec = {"overall": float(1 + k % 5), "verified": True, "reviewTime": "03 13, 2011", "reviewerID": u,
               "asin": i, "reviewerName": "Pat", "reviewText": "Nice.", "summary": "ok",
               "unixReviewTime": 1_300_000_000 + k}
        if k % 3 == 0:
            rec.update(vote="1,204", style={"Size:": " Large"}, image=["https://example.com/x.jpg"])
        lines.append(json.dumps(rec))
    return write_lines(path, lines)


def parent(i):
    return i.replace("B", "P", 1)


def reviews_2023(path):
    # each review names a variant ASIN; the item is its parent
    return write_lines(path, [json.dumps({
        "rating": float(1 + k % 5), "title": "ok", "text": "Nice.", "images": [], "asin": f"{i[:-1]}{k % 3}",
        "parent_asin": parent(i), "user_id": u, "timestamp": 1_600_000_000_000 + k, "helpful_vote": 0,
        "verified_purchase": True}) for u, i, k in pairs()])


def meta_2014(path, tmp, skip=("B000000002",)):
    """Python literals as in meta_<Cat>.json.gz; the items of ``skip`` get only lines of code."""
    lines = [repr({"asin": i, "title": f"Title {n}", "brand": "Brandco", "price": 9.99,
                   "categories": [["Baby", "Feeding"], ["Baby", "Bottles"]], "description": "Line one\nline two",
                   "imUrl": "http://x/y.jpg", "related": {"also_bought": [ITEMS[0]]}, "salesRank": {"Baby": n}})
             for n, i in enumerate(ITEMS) if i not in skip]
    for i in skip:
        lines += [f"__import__('os').system('touch {tmp / 'p1'}')",
                  f"{{'asin': '{i}', 'title': open('{tmp / 'p2'}', 'w').write('x')}}",
                  f"print(open('{tmp / 'p3'}', 'w'))"]
    return write_lines(path, lines)


def meta_2018(path):
    return write_lines(path, [json.dumps({
        "category": ["Baby", "Feeding"], "tech1": "", "description": ["First part.", "Second part."],
        "fit": "", "title": f"Title {n}", "also_buy": [], "image": [], "tech2": "", "brand": "Brandco",
        "feature": ["BPA free"], "rank": "1 in Baby", "also_view": [], "main_cat": "Baby", "price": "$9.99",
        "asin": i, "details": {}}) for n, i in enumerate(ITEMS)])


def meta_2023(path):
    return write_lines(path, [json.dumps({
        "main_category": "Baby", "title": f"Title {n}", "average_rating": 4.5, "rating_number": 10,
        "features": ["Soft"], "description": ["Desc a", "Desc b"], "price": None, "images": [], "videos": [],
        "store": "StoreCo", "categories": ["Baby Products", "Feeding"], "details": {"Brand": "X"},
        "parent_asin": parent(i), "bought_together": None}) for n, i in enumerate(ITEMS)])


def image_row(asin: str) -> np.ndarray:
    return (np.arange(dumps.IMAGE_DIM, dtype=np.float32) / 4096 + int(asin[-1], 36)).astype("<f4")


def write_b(path, asins, tail=b""):
    with open(path, "wb") as fh:
        for a in asins:
            fh.write(a.encode("ascii") + image_row(a).tobytes())
        fh.write(tail)
    return str(path)


def read_map(path):
    lines = open(path, encoding="utf-8").read().splitlines()[1:]
    return {raw: int(i) for raw, i in (ln.split("\t") for ln in lines)}


def hashed(texts):
    return encode_texts(texts, encoder="hash", progress=False)


@pytest.fixture(scope="module")
def baby_2014(tmp_path_factory):
    """2014 reviews + literal metadata (item 2: code lines only) + .b images (item 5 absent)."""
    tmp = tmp_path_factory.mktemp("d2014")
    inter = reviews_2014(tmp / "reviews_Baby_5.json.gz")
    meta = meta_2014(tmp / "meta_Baby.json.gz", tmp)
    images = write_b(tmp / "image_features_Baby.b", [a for a in ITEMS + [FOREIGN, RARE] if a != ITEMS[5]])
    out = str(tmp / "out")
    return tmp, inter, meta, images, out


def test_2014_dump_prepares_skips_code_and_records_missing(baby_2014, capsys):
    tmp, inter, meta, images, out = baby_2014
    ds = prepare(inter, out, items_url=meta, image_features_url=images, text_encoder="hash", progress=True)
    log = capsys.readouterr().err
    for name in ("p1", "p2", "p3"):  # the code lines were not run
        assert not (tmp / name).exists()
    assert "3 lines skipped, neither JSON nor a Python dict literal (first: line 8); none was run" in log
    assert "Amazon 2014/2018 reviews (2014 layout)" in log
    assert "missing (zero vectors, recorded in <modality>_present): image 1 of 8 items, text 1 of 8 items" in log
    imap = read_map(os.path.join(out, "item_map.tsv"))
    assert sorted(imap) == ITEMS  # the rare item fell to the 5-core, the foreign ASIN was never an item
    image, text = ds.features["image"], ds.features["text"]
    assert image.shape == (8, 4096) and text.shape == (8, 384)
    np.testing.assert_array_equal(image[imap[ITEMS[1]]], image_row(ITEMS[1]))
    assert not image[imap[ITEMS[5]]].any() and not text[imap[ITEMS[2]]].any()
    np.testing.assert_array_equal(text[imap[ITEMS[0]]],
                                  hashed(["Title 0 Brandco Baby Feeding Bottles Line one line two"])[0])
    back = read_dataset(out)
    assert back.present["image"].tolist() == [i != ITEMS[5] for i in sorted(imap, key=imap.get)]
    assert back.present["text"].tolist() == [i != ITEMS[2] for i in sorted(imap, key=imap.get)]

    stats, problems = inspect_path(out)
    assert problems == []
    assert stats["modalities"]["image"]["missing"] == 1 and stats["modalities"]["text"]["missing"] == 1
    assert "8 x 4096 float32, 1 items missing" in format_stats(stats)
    assert main(["data", "inspect", out]) == 0
    assert "8 x 384 float32, 1 items missing" in capsys.readouterr().out


def test_2014_dump_trains(baby_2014, tmp_path):
    from margo_dist.train.entry import train

    _, inter, meta, images, out = baby_2014
    if not os.path.exists(out):
        prepare(inter, out, items_url=meta, image_features_url=images, text_encoder="hash", progress=False)
    cfg = load_config("configs/default.yaml", [
        f"data.path={out}", f"run.dir={tmp_path / 'run'}", "train.max_epochs=1", "train.progress=false",
        "model.dim=8", "run.plots=false", "graph.user_k=3", "graph.item_k=3", "train.batch_size=64",
        "train.topk=[2,5]", "train.select_metric=recall@5"])
    summary = train(cfg, log=lambda _m: None)
    assert 0.0 <= summary["test"]["recall@5"] <= 1.0


def test_b_images_reach_both_formats_through_a_scratch_file_that_goes(baby_2014, tmp_path, monkeypatch):
    _, inter, meta, images, _ = baby_2014
    monkeypatch.setattr(formats, "PARQUET_FEATURE_ROWS", 3)  # several row groups
    copied = []  # the image table reaches the writers as a map of its scratch file, never read whole
    real_chunks, real_save, real_move = formats.dio.npy_row_chunks, formats.dio.save_npy, formats.dio.move_npy
    moved = []
    monkeypatch.setattr(formats.dio, "move_npy", lambda a, url: (moved.append(url), real_move(a, url))[1])
    monkeypatch.setattr(formats.dio, "npy_row_chunks",
                        lambda a, rows: (copied.append(formats.dio.mapped_npy(a)), real_chunks(a, rows))[1])
    monkeypatch.setattr(formats.dio, "save_npy",
                        lambda url, a: (copied.append(formats.dio.mapped_npy(a)), real_save(url, a))[1])
    got = {}
    for fmt in ("mmrec", "parquet"):
        out = str(tmp_path / fmt)
        ds = prepare(inter, out, items_url=meta, image_features_url=images, text_encoder="hash", fmt=fmt,
                     progress=False)
        assert not [e for e in os.listdir(tmp_path) if e.startswith(".margo-prepare-")]
        got[fmt] = read_dataset(out, fmt=fmt)
        np.testing.assert_array_equal(got[fmt].features["image"], ds.features["image"])
    imap = read_map(os.path.join(tmp_path, "mmrec", "item_map.tsv"))
    np.testing.assert_array_equal(got["parquet"].features["image"][imap[ITEMS[3]]], image_row(ITEMS[3]))
    assert not got["parquet"].features["image"][imap[ITEMS[5]]].any()
    assert got["parquet"].fingerprint() == got["mmrec"].fingerprint()
    # MMRec: the scratch file is moved in (same disk, a rename); Parquet: read back in row groups
    assert [os.path.basename(u) for u in moved] == ["image_feat.npy"]
    assert sum(1 for c in copied if c is not None and c.endswith("image_feat.npy")) == 1


def test_an_item_missing_every_modality_is_refused(tmp_path):
    inter = reviews_2014(tmp_path / "reviews_Baby_5.json.gz")
    meta = meta_2014(tmp_path / "meta_Baby.json.gz", tmp_path)
    images = write_b(tmp_path / "image_features_Baby.b", [a for a in ITEMS if a != ITEMS[2]])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"1 items in the k-core have no feature in any modality \(items B000000002\)"):
        prepare(inter, str(out), items_url=meta, image_features_url=images, text_encoder="hash", progress=False)
    assert not out.exists()


def test_2018_dump_with_parquet_images(tmp_path):
    inter = reviews_2018(tmp_path / "Baby_5.json.gz")
    meta = meta_2018(tmp_path / "meta_Baby.json.gz")
    img = str(tmp_path / "img.parquet")
    kept = ITEMS[:6]
    pq.write_table(pa.table({"item_id": kept, "feature": pa.array([[float(k), 1.0] for k in range(6)],
                                                                  type=pa.list_(pa.float32()))}), img)
    out = str(tmp_path / "out")
    ds = prepare(inter, out, items_url=meta, image_features_url=img, text_encoder="hash", fmt="parquet",
                 progress=False)
    assert any("Amazon 2018 metadata, 8 records" in n for n in ds.notes)
    imap = read_map(os.path.join(out, "item_map.tsv"))
    np.testing.assert_array_equal(ds.features["text"][imap[ITEMS[3]]],
                                  hashed(["Title 3 Brandco Baby Feeding First part. Second part."])[0])
    assert int((~ds.present["image"]).sum()) == 2 and ds.present["text"].all()
    stats, problems = inspect_path(out, fmt="parquet")
    assert problems == [] and stats["modalities"]["image"]["missing"] == 2
    convert(out, str(tmp_path / "mm"), src_fmt="parquet", dst_fmt="mmrec")
    back = read_dataset(str(tmp_path / "mm"))
    assert np.array_equal(back.present["image"], ds.present["image"])
    assert back.fingerprint() == ds.fingerprint()


def test_2023_dump_items_are_parent_asins(tmp_path):
    inter = reviews_2023(tmp_path / "Baby_Products.jsonl.gz")
    meta = meta_2023(tmp_path / "meta_Baby_Products.jsonl.gz")
    out = str(tmp_path / "out")
    ds = prepare(inter, out, items_url=meta, text_encoder="hash", progress=False)
    assert sorted(read_map(os.path.join(out, "item_map.tsv"))) == [parent(i) for i in ITEMS]
    assert len(ds.user) == len(pairs()) - 1 and ds.present["text"].all()
    np.testing.assert_array_equal(ds.features["text"][0],
                                  hashed(["Title 0 StoreCo Baby Products Feeding Desc a Desc b"])[0])
    stats, problems = inspect_path(out)
    assert problems == [] and stats["modalities"]["text"]["missing"] == 0


def test_layouts_are_told_from_records(tmp_path):
    assert dumps.detect_reviews(reviews_2014(tmp_path / "a.gz")) is dumps.REVIEWS_MCAULEY
    assert dumps.review_year(reviews_2018(tmp_path / "b.gz"), dumps.REVIEWS_MCAULEY) == "2018"
    assert dumps.detect_reviews(reviews_2023(tmp_path / "c.gz")) is dumps.REVIEWS_2023
    assert dumps.detect_meta(meta_2014(tmp_path / "d.gz", tmp_path)) is dumps.META_2014
    assert dumps.detect_meta(meta_2018(tmp_path / "e.gz")) is dumps.META_2018
    assert dumps.detect_meta(meta_2023(tmp_path / "f.gz")) is dumps.META_2023
    # a literal with nothing but asin and title is 2014's; the same as JSON is a plain item file
    assert dumps.detect_meta(write_lines(tmp_path / "g.gz", [repr({"asin": "X", "title": "T"})])) is dumps.META_2014
    assert dumps.detect_meta(write_lines(tmp_path / "h.gz", [json.dumps({"asin": "X", "title": "T"})])) is None
    assert dumps.detect_reviews(write_lines(tmp_path / "i.gz", ["user,item", "a,b"])) is None


def test_parse_record_never_runs_code(tmp_path):
    flag = tmp_path / "ran"
    for line in (f"__import__('os').system('touch {flag}')", f"{{'a': open('{flag}', 'w')}}",
                 "{'a': (lambda: 1)()}", "[1, 2]", "{'a': 1" + "}" * 3):
        assert dumps.parse_record(line.encode()) == (None, False)
    assert not flag.exists()
    assert dumps.parse_record(b"{'asin': 'X', 'price': 9.5}") == ({"asin": "X", "price": 9.5}, False)


def test_image_binary_streams_and_keeps_only_wanted_asins(tmp_path, monkeypatch):
    asins = [ITEMS[0], FOREIGN, ITEMS[1], ITEMS[0], ITEMS[3]]  # ITEMS[0] twice: the first is used
    url = write_b(tmp_path / "f.b", asins)
    reads: list[int] = []
    real_open = dumps.dio.open_url

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def read(self, n=-1):
            reads.append(n)
            return self.fh.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(dumps.dio, "open_url", lambda *a, **k: Spy(real_open(*a, **k)))
    wanted = np.array([ITEMS[3], ITEMS[0], ITEMS[2]])
    out, found, notes = dumps.read_image_binary(url, wanted, str(tmp_path / "rows.npy"), chunk_records=2)
    assert 0 < max(reads) <= 2 * dumps.RECORD_BYTES
    assert found.tolist() == [True, True, False]
    np.testing.assert_array_equal(out[0], image_row(ITEMS[3]))
    np.testing.assert_array_equal(out[1], image_row(ITEMS[0]))
    assert not out[2].any()
    assert isinstance(out, np.memmap) and out.filename == str(tmp_path / "rows.npy")  # on disk, not in memory
    assert "5 image records, 2 of them for the 3 items kept" in notes[0] and "1 records repeat" in notes[1]


def test_image_binary_truncated_record_names_the_offset(tmp_path):
    url = write_b(tmp_path / "t.b", ITEMS[:3], tail=b"B000000003" + b"\0" * 90)
    with pytest.raises(DataError, match=rf"t\.b: byte offset {3 * dumps.RECORD_BYTES}: the file ends inside "
                                        r"a record \(100 of 16394 bytes"):
        dumps.read_image_binary(url, np.array(ITEMS), str(tmp_path / "rows.npy"))


def test_presence_file_is_validated(tmp_path):
    from tests.data.helpers import write_mmrec

    folder = write_mmrec(tmp_path / "ds")
    np.save(os.path.join(folder, "image_present.npy"), np.ones(5, dtype=np.int8))
    with pytest.raises(DataError, match=r"image_present\.npy \(modality 'image'\): presence mask int8"):
        read_dataset(folder)
    image = np.load(os.path.join(folder, "image_feat.npy"))
    image[4] = 0
    np.save(os.path.join(folder, "image_feat.npy"), image)
    np.save(os.path.join(folder, "image_present.npy"), np.arange(5) != 4)
    text = np.load(os.path.join(folder, "text_feat.npy"))
    text[4] = 0
    np.save(os.path.join(folder, "text_feat.npy"), text)
    np.save(os.path.join(folder, "text_present.npy"), np.arange(5) != 4)
    _, problems = inspect_path(folder)
    assert len(problems) == 1 and "1 items have no feature in any modality (item ids 4)" in problems[0]


def test_review_lines_arrow_refuses_are_read_one_by_one(tmp_path):
    lines = [repr({"reviewerID": u, "asin": i, "overall": 5.0, "unixReviewTime": k}) for u, i, k in pairs()]
    url = write_lines(tmp_path / "reviews_Baby_5.json.gz", lines)
    cols = dumps.read_reviews(url, dumps.REVIEWS_MCAULEY)
    assert cols["asin"].to_pylist() == [i for _, i, _ in pairs()]
    flag = tmp_path / "ran"
    bad = write_lines(tmp_path / "bad.json.gz", lines[:2] + [f"__import__('os').system('touch {flag}')"])
    with pytest.raises(DataError, match=r"bad\.json\.gz line 3: not a JSON object or a Python dict literal"):
        dumps.read_reviews(bad, dumps.REVIEWS_MCAULEY)
    assert not flag.exists()
