"""benchmarks/bench_graphs.py on its 'tiny' size: every graph step runs and lands in the table."""

from __future__ import annotations

import concurrent.futures as cf
import math
from types import SimpleNamespace

import pytest

from scripts_helpers import load_script, markdown_table, number, run_script

HEAD = ["size", "step", "precision", "rows", "cols", "seconds", "RSS before MB", "peak growth MB", "output MB",
        "dense rows^2 MB", "recall", "recomputed"]


def test_every_step_of_the_tiny_size_is_tabled(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
                                               ) -> None:
    """Both kNN graphs and the co-occurrence graph, in chunks smaller than the rows (steps run in threads)."""
    tool = load_script("benchmarks/bench_graphs.py")
    threads = SimpleNamespace(ProcessPoolExecutor=lambda max_workers, mp_context: cf.ThreadPoolExecutor(max_workers))
    monkeypatch.setattr(tool, "cf", threads)
    assert tool.main(["--sizes", "tiny", "--item-k", "3", "--user-k", "5", "--chunk-rows", "32"]) == 0
    rows = markdown_table(capsys.readouterr().out, "size")
    assert list(rows[0]) == HEAD
    assert [(r["size"], r["step"], r["rows"], r["cols"]) for r in rows] == [
        ("tiny", "knn:image", "80", "12"), ("tiny", "knn:text", "80", "8"), ("tiny", "cooccurrence", "150", "80")]
    for r in rows:
        assert r["precision"] == "float32" and r["recall"] == "-" and r["recomputed"] == "-"
        assert all(math.isfinite(number(r[c])) and number(r[c]) >= 0 for c in HEAD[5:10])


def test_a_bfloat16_knn_is_tabled_with_its_recall_and_time_ratio(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """--precision float32,bfloat16: each kNN step twice, the bf16 row with its neighbour recall
    against the float32 lists and the rows it recomputed, and a time-ratio line per step."""
    tool = load_script("benchmarks/bench_graphs.py")
    threads = SimpleNamespace(ProcessPoolExecutor=lambda max_workers, mp_context: cf.ThreadPoolExecutor(max_workers))
    monkeypatch.setattr(tool, "cf", threads)
    assert tool.main(["--sizes", "tiny", "--steps", "knn:image", "--item-k", "3", "--precision",
                      "float32,bfloat16"]) == 0
    out = capsys.readouterr().out
    rows = markdown_table(out, "size")
    assert [(r["step"], r["precision"]) for r in rows] == [("knn:image", "float32"), ("knn:image", "bfloat16")]
    assert rows[0]["recall"] == "-" and number(rows[1]["recall"]) == 1.0 and int(rows[1]["recomputed"]) >= 0
    assert "[tiny] knn:image bfloat16/float32 time ratio: " in out


def test_script_runs_a_step_in_a_spawned_process() -> None:
    """The real entry point: a 'spawn' child must import the step and send its result back."""
    done = run_script("benchmarks/bench_graphs.py",
                      ["--sizes", "tiny", "--steps", "cooccurrence", "--block-rows", "64"], 120)
    assert done.returncode == 0, done.stderr
    rows = markdown_table(done.stdout, "size")
    assert [(r["step"], r["rows"], r["cols"]) for r in rows] == [("cooccurrence", "150", "80")]
    assert "[tiny] cooccurrence float32:" in done.stdout
