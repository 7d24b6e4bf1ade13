"""benchmarks/bench_local.py on its '--tiny' shape: both training modes are timed and tabled."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from scripts_helpers import inline_mp, load_script

COLUMNS = ["mode", "samplers", "precision", "batches", "epoch s", "triplets/s", "eval s", "peak RSS MB", "setup s"]


def run_tiny(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[str, list[str], int]:
    """bench_local's main on arguments ``args`` with its modes run inline: (output, its lines,
    the index of the first table's header line)."""
    tool = load_script("benchmarks/bench_local.py")
    monkeypatch.setattr(tool, "mp", inline_mp())
    tool.main(["--tiny", *args])
    out = capsys.readouterr().out
    lines = out.splitlines()
    return out, lines, next(k for k, ln in enumerate(lines) if ln.startswith("mode "))


def test_tiny_shape_times_full_and_sampled(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                           tmp_path: Path) -> None:
    """One row per mode and sampler count with positive, finite numbers, each round's ratio
    lines and their medians (modes run inline, not spawned)."""
    out, lines, _ = run_tiny(monkeypatch, capsys, "--workers", "0,1", "--repeat", "2", "--root", str(tmp_path))
    assert (tmp_path / "u150-i80-n1500-v12-t8" / "synth.json").exists()
    heads = [k for k, ln in enumerate(lines) if ln.startswith("mode ")]
    assert len(heads) == 2  # one table per round
    assert lines[heads[0]].split() == ["mode", "samplers", "precision", "batches", "epoch", "s", "triplets/s", "eval",
                                       "s", "peak", "RSS", "MB", "setup", "s"]
    rows = [dict(zip(COLUMNS, ln.split(), strict=True)) for ln in lines[heads[0] + 2: heads[0] + 5]]
    assert [(r["mode"], r["samplers"]) for r in rows] == [("full", "-"), ("sampled", "0"), ("sampled", "1")]
    for r in rows:
        assert int(r["batches"]) >= 1 and r["precision"] == "float32"
        assert all(math.isfinite(float(r[c])) and float(r[c]) >= 0 for c in COLUMNS[4:])
        assert float(r["triplets/s"]) > 0
    for workers in (0, 1):
        per_round = re.findall(rf"sampled \({workers} sampler processes\)/full epoch-time ratio: (\S+)", out)
        assert len(per_round) == 2 and all(float(v) > 0 for v in per_round)
        median = re.search(rf"sampled \({workers} sampler processes\)/full epoch-time ratio per round: (\S+) (\S+); "
                           r"median (\S+)", out)
        assert median is not None
        a, b, mid = (float(median.group(k)) for k in (1, 2, 3))
        assert abs(mid - (a + b) / 2) <= 0.006  # the median of two rounds: their mean


def test_alternate_times_both_modes_in_turn(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                            tmp_path: Path) -> None:
    """--alternate: one table with the two modes' step counts and times, and the two ratios,
    which agree with the table's means."""
    out, lines, head = run_tiny(monkeypatch, capsys, "--alternate", "3", "--workers", "0", "--root", str(tmp_path))
    rows = {ln.split()[0]: [float(v) for v in ln.split()[1:]] for ln in lines[head + 2: head + 4]}
    assert sorted(rows) == ["full", "sampled"]
    for steps, mean, median, least in rows.values():
        assert steps == 3 and 0 < least <= median and least <= mean
    ratio = re.search(r"sampled/full step-time ratio: of the means (\S+), median of the 3 pairs (\S+)", out)
    assert ratio is not None
    # the table's means are rounded to 3 decimals: the ratio of the means lies within what they allow
    (full, sampled), half = (rows["full"][1], rows["sampled"][1]), 0.0005
    assert (sampled - half) / (full + half) - 0.001 <= float(ratio.group(1)) <= (sampled + half) / (full - half) + 0.001


def test_precision_rows_and_their_ratio(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                        tmp_path: Path) -> None:
    """--precision float32,bfloat16: a row per precision and the bf16/float32 epoch-time ratio
    line, which names the two rows' peak RSS."""
    out, lines, head = run_tiny(monkeypatch, capsys, "--modes", "full", "--precision", "float32,bfloat16", "--root",
                                str(tmp_path))
    rows = [dict(zip(COLUMNS, ln.split(), strict=True)) for ln in lines[head + 2: head + 4]]
    assert [(r["mode"], r["precision"]) for r in rows] == [("full", "float32"), ("full", "bfloat16")]
    ratio = re.search(r"full bfloat16/float32 epoch-time ratio: (\S+) \(peak RSS (\d+) against (\d+) MB\)", out)
    assert ratio is not None and float(ratio.group(1)) > 0  # tiny epochs: the table's 0.01 s rounding hides it
    assert (ratio.group(2), ratio.group(3)) == (rows[1]["peak RSS MB"], rows[0]["peak RSS MB"])
