"""benchmarks/bench_scale.py at a 0.1% slice of Elec: every step, from generating the data to one evaluation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scripts_helpers import inline_mp, load_script, run_script

STEPS = ["synth", "read", "graphs", "partition", "epoch", "evaluate"]
URL = "elec-u192-i63-n1689"  # 0.1% of 192,403 users, 63,001 items, 1,689,188 interactions


def step_lines(out: str) -> dict[str, str]:
    """The per-step timing lines, by step name."""
    return {m.group(1): m.group(0) for m in re.finditer(r"^(\w+)\s+\d+\.\d s\s+\S+ MB.*$", out, re.M)}


def test_every_step_succeeds_on_a_slice(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                        tmp_path: Path) -> None:
    """A failing step is only reported ('FAILED') by the tool, so each line is checked (steps run inline)."""
    tool = load_script("benchmarks/bench_scale.py")
    monkeypatch.setattr(tool, "mp", inline_mp())
    tool.main(["--scale", "0.001", "--root", str(tmp_path), "--batch-size", "256", "--workers", "0",
               "--fanouts", "{ui: [3, 3], iu: [3, 3], ii: [3], uu: [5]}"])
    out = capsys.readouterr().out
    lines = step_lines(out)
    assert list(lines) == STEPS
    assert not [ln for ln in lines.values() if "FAILED" in ln], out
    assert "  read: 192 users, 63 items, 1689 interactions" in out
    assert re.search(r"  epoch: \d+ steps of 256, \d+ triplets/s, loss \d+\.\d+", out)
    assert re.search(r"  evaluate: valid recall@20 0\.\d{4} after one epoch", out)
    assert (tmp_path / URL / ".margo_cache" / "bench_scale_model.pt").exists()


def test_script_spawns_each_step(tmp_path: Path) -> None:
    """The real entry point: each step's 'spawn' child reports seconds and peak RSS back through its queue."""
    done = run_script("benchmarks/bench_scale.py",
                      ["--scale", "0.001", "--root", str(tmp_path), "--steps", "synth,read"], 120)
    assert done.returncode == 0, done.stderr
    lines = step_lines(done.stdout)
    assert list(lines) == ["synth", "read"] and "FAILED" not in done.stdout
    assert "  read: 192 users, 63 items, 1689 interactions" in done.stdout
