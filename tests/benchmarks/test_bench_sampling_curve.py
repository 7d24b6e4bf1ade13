"""benchmarks/bench_sampling_curve.py on its 'test' size: both modes timed, the table and the plot written."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from scripts_helpers import inline_mp, load_script, markdown_table, number

HEAD = ["size", "users", "items", "interactions", "full s/epoch", "sampled s/epoch", "sampled/full", "items reached",
        "users reached"]


def test_test_size_row_and_plot(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                tmp_path: Path) -> None:
    """Batches of 256 give the 1 warm-up + 2 timed steps; the sampled receptive field is a fraction (modes inline)."""
    tool = load_script("benchmarks/bench_sampling_curve.py")
    monkeypatch.setattr(tool, "mp", inline_mp())
    plot = tmp_path / "curve.png"
    tool.main(["--sizes", "test", "--batches", "2", "--root", str(tmp_path), "--plot", str(plot),
               "--fanouts", "{ui: [3, 3], iu: [3, 3], ii: [3], uu: [5]}",
               "--set", "train.batch_size=256", "model.dim=8", "sampler.num_workers=0"])
    out = capsys.readouterr().out
    assert "; batch 256; epoch = mean of 2 steps" in out
    rows = markdown_table(out, "size")
    assert list(rows[0]) == HEAD
    assert [(r["size"], r["users"], r["items"], r["interactions"]) for r in rows] == [("test", "150", "80", "1,500")]
    row = rows[0]
    assert all(math.isfinite(number(row[c])) and number(row[c]) >= 0 for c in HEAD[4:])
    assert 0 < number(row["items reached"]) <= 100 and 0 < number(row["users reached"]) <= 100
    assert plot.read_bytes()[:4] == b"\x89PNG"
