"""benchmarks/bench_prepare.py at a tiny scale: the dump in the 2018 layout prepares, and the table has its ratio."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from margo_dist.data import dumps

from scripts_helpers import load_script

bench_prepare = load_script("benchmarks/bench_prepare.py")


def test_the_synthetic_dump_is_the_2018_layout_with_missing_images(tmp_path):
    dump = bench_prepare.write_dump(0.002, str(tmp_path))
    assert dumps.detect_reviews(dump.reviews).name.startswith("Amazon 2014/2018")
    assert dumps.detect_meta(dump.meta).name == "Amazon 2018 metadata"
    with gzip.open(dump.meta, "rt") as fh:
        records = [json.loads(line) for line in fh]
    assert any(r["image"] == [] for r in records) and len(records) < dump.items  # some items have no line
    assert os.path.getsize(dump.images) % dumps.RECORD_BYTES == 0


def test_the_benchmark_prints_its_table_and_the_ratio(capsys):
    assert bench_prepare.main(["--scales", "0.002,0.004"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("0.002", "0.004"))]
    assert [r[:2] for r in rows] == [["0.002", "hash"], ["0.004", "hash"]]
    assert all(int(r[3].replace(",", "")) <= int(r[2].replace(",", "")) for r in rows)  # kept <= reviews
    assert "hash: x0.004/x0.002 time ratio" in out


def test_a_kept_dump_is_reused_not_rewritten(tmp_path, capsys):
    args = ["--scales", "0.002", "--work", str(tmp_path), "--keep"]
    assert bench_prepare.main(args) == 0
    reviews = tmp_path / "x0.002" / "Electronics_5.json.gz"
    before = reviews.stat().st_mtime_ns
    capsys.readouterr()
    assert bench_prepare.main([*args, "--reuse", "--repeat", "2"]) == 0
    assert reviews.stat().st_mtime_ns == before
    captured = capsys.readouterr()
    assert "x0.002: reused " in captured.err and "x0.002: wrote " not in captured.err
    (row,) = [line.split() for line in captured.out.splitlines() if line.strip().startswith("0.002")]
    runs = [float(x) for x in row[6:]]
    assert len(runs) == 2 and float(row[4]) == pytest.approx(sum(runs) / 2, abs=0.06)  # the median of two
