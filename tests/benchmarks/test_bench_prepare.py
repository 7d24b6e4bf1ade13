"""benchmarks/bench_prepare.py at a tiny scale: the dump in the 2018 layout prepares, and the table has its ratio."""

from __future__ import annotations

import gzip
import json
import os

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
