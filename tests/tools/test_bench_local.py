"""tools/bench_local.py on its '--tiny' shape: both training modes are timed and tabled."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from .helpers import inline_mp, load_tool

COLUMNS = ["mode", "batches", "epoch s", "triplets/s", "eval s", "peak RSS MB", "setup s"]


def test_tiny_shape_times_full_and_sampled(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                           tmp_path: Path) -> None:
    """One row per mode with positive, finite numbers, and the ratio line (modes run inline, not spawned)."""
    tool = load_tool("bench_local")
    monkeypatch.setattr(tool, "mp", inline_mp())
    tool.main(["--tiny", "--workers", "0", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert (tmp_path / "u150-i80-n1500-v12-t8" / "synth.json").exists()
    lines = out.splitlines()
    head = next(k for k, ln in enumerate(lines) if ln.startswith("mode "))
    assert lines[head].split() == ["mode", "batches", "epoch", "s", "triplets/s", "eval", "s", "peak", "RSS", "MB",
                                   "setup", "s"]
    rows = [dict(zip(COLUMNS, ln.split(), strict=True)) for ln in lines[head + 2: head + 4]]
    assert [r["mode"] for r in rows] == ["full", "sampled"]
    for r in rows:
        assert int(r["batches"]) >= 1
        assert all(math.isfinite(float(r[c])) and float(r[c]) >= 0 for c in COLUMNS[2:])
        assert float(r["triplets/s"]) > 0
    ratio = re.search(r"sampled/full epoch-time ratio: (\S+)", out)
    assert ratio is not None and float(ratio.group(1)) > 0
