"""tools/bench_dist.py on the tiny shape: both world sizes measured, the N = 2 worker holds less."""

from __future__ import annotations

import subprocess
import sys


def test_bench_dist_prints_both_world_sizes_and_the_ratio(tmp_path):
    # a script, not an import: the spawned workers re-import the tool as the main module
    done = subprocess.run([sys.executable, "tools/bench_dist.py", "--tiny", "--steps", "1", "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    rows = [line.split() for line in out.splitlines() if line[:2].strip() in ("1", "2") and len(line.split()) == 9]
    assert [r[0] for r in rows] == ["1", "2", "2"]
    user_mb = {r[0]: float(r[5]) for r in rows}
    assert 0 < user_mb["2"] < user_mb["1"]
    assert all(float(r[3]) > 0 for r in rows[1:])  # N = 2 workers send rows and gradients
    assert "epoch-time ratio N=2 / N=1:" in out
