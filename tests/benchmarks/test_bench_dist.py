"""benchmarks/bench_dist.py on the tiny shape: every world size measured, the N = 2 workers hold
half of the features and tables, and in sampled mode they ask other owners for rows."""

from __future__ import annotations

import subprocess
import sys


def table(out: str) -> list[list[str]]:
    """The rows of the per-worker table (15 columns, the first the world size)."""
    return [line.split() for line in out.splitlines() if len(line.split()) == 15 and line.split()[0].isdigit()]


def run(tmp_path, *args: str) -> str:
    # a script, not an import: the spawned workers re-import the script as the main module
    done = subprocess.run([sys.executable, "benchmarks/bench_dist.py", "--tiny", "--steps", "1", "--root",
                           str(tmp_path), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_dist_prints_both_world_sizes_and_the_ratio(tmp_path):
    out = run(tmp_path, "--plot", str(tmp_path / "memory.png"))
    rows = table(out)
    assert [(r[0], r[1]) for r in rows] == [("1", "0"), ("2", "0"), ("2", "1")]
    user_mb = {r[0]: float(r[8]) for r in rows}
    assert 0 < user_mb["2"] < user_mb["1"]
    assert all(float(r[6]) > 0 for r in rows[1:])  # N = 2 workers send rows and gradients
    assert [float(r[3]) for r in rows] == [80.0, float(rows[1][3]), 80.0 - float(rows[1][3])]  # own items
    line = next(ln for ln in out.splitlines() if ln.startswith("epoch-time ratio N=2 / N=1:"))
    held = float(line.split("N=1: ")[2].split()[0])
    assert 0.45 <= held <= 0.55, line
    assert (tmp_path / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_dist_in_sampled_mode_counts_the_rows_asked_of_other_owners(tmp_path):
    rows = table(run(tmp_path, "--mode", "sampled"))
    assert [r[0] for r in rows] == ["1", "2", "2"]
    assert float(rows[0][5]) == 0 and all(float(r[5]) > 0 for r in rows[1:])
    assert all(0 < float(r[12]) <= 1 for r in rows)  # the halo's share of the nodes
