"""experiments/reliability_signal.py on a tiny margo run: the AUC of the L_cal and the BPR signal."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from margo_dist.config import load_config
from margo_dist.data.synth import load_truth
from margo_dist.train.entry import train

from scripts_helpers import SMALL, load_script


def test_both_signals_scored_on_a_trained_run(capsys: pytest.CaptureFixture, tiny_data: str, tmp_path: Path) -> None:
    """The run's stage-1 state is read back and each signal gets three AUCs in [0, 1]."""
    run = tmp_path / "run"
    cfg = load_config("configs/default.yaml", [f"data.path={tiny_data}", f"run.dir={run}", "train.max_epochs=2",
                                               *SMALL])
    train(cfg, log=lambda _m: None)
    tool = load_script("experiments/reliability_signal.py")
    assert tool.main([str(run), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    noisy = int(np.sum(load_truth(tiny_data)[1]))
    assert f"(tau {cfg.model.tau}, 2 epochs of triplets, {noisy} noisy pairs)" in out  # the run's own tau
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.split()[:1] in (["L_cal"], ["BPR"])}
    assert set(rows) == {"L_cal", "BPR"}
    for aucs in rows.values():
        assert len(aucs) == 3 and all(math.isfinite(float(a)) and 0.0 <= float(a) <= 1.0 for a in aucs)
