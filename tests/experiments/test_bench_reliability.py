"""experiments/bench_reliability.py on one tiny seed: margo, wo_cal (from margo's stage 1) and the summary table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from scripts_helpers import SMALL, TINY, load_script

KEYS = {"margo_auc", "wo_cal_auc", "margo_r20", "wo_cal_r20", "wo_weight_r20"}


def test_one_tiny_seed_prints_table_json_and_verdict(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """The mean JSON has every column in [0, 1], the table a row per seed and the mean, the exit code the verdict."""
    tool = load_script("experiments/bench_reliability.py")
    dims = ",".join(f"{k}:{v}" for k, v in TINY.modality_dims.items())
    rc = tool.main(["--seeds", "1", "--users", str(TINY.n_users), "--items", str(TINY.n_items),
                    "--interactions", str(TINY.n_interactions), "--dims", dims, "--max-epochs", "2",
                    "--patience", "2", "--out", str(tmp_path), "--set", *SMALL])
    out = capsys.readouterr().out
    mean = json.loads(next(ln for ln in out.splitlines() if ln.startswith('{"mean"')))["mean"]
    assert set(mean) == KEYS
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in mean.values())
    table = [ln.split() for ln in out.splitlines() if ln.split()[:1] in (["0"], ["mean"])]
    assert [row[0] for row in table] == ["0", "mean"] and all(len(row) == 6 for row in table)
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("acceptance") and verdict.endswith("PASS" if rc == 0 else "FAIL")
    assert rc in (0, 1)
    runs = [p.parent.name for p in tmp_path.glob("runs-*/*/summary.json")]
    assert sorted(runs) == ["margo", "wo_cal"]


def test_the_recall_check_compares_the_worker_mean_with_the_local_mean(capsys: pytest.CaptureFixture) -> None:
    tool = load_script("experiments/bench_reliability.py")
    rows = [{"seed": 0, "margo_r20": 0.40, "dist_r20": 0.39}, {"seed": 1, "margo_r20": 0.30, "dist_r20": 0.29}]
    # mean 0.34 against 0.35: 2.9% lower
    assert tool._check_recall(rows, 2, 0.03, ["train.mode=sampled"]) == 0
    out = capsys.readouterr().out
    assert "-2.50%" in out and "-3.33%" in out and "(-2.86%)" in out and out.strip().endswith("PASS")
    assert tool._check_recall(rows, 2, 0.02, []) == 1
    assert capsys.readouterr().out.strip().endswith("FAIL")
