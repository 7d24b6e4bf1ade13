"""experiments/mf_prototype.py on the tiny dataset: stage 1, then one calibrated stage per alpha."""

from __future__ import annotations

import math
import re

import pytest

from scripts_helpers import load_script


def test_a_row_per_alpha(capsys: pytest.CaptureFixture, tiny_data: str) -> None:
    """Recall and weight AUC in [0, 1] and the epochs within the cap, for alpha 0 (w/o L_cal) and 1."""
    tool = load_script("experiments/mf_prototype.py")
    assert tool.main(["--data", tiny_data, "--alphas", "0,1", "--max-epochs", "2", "--patience", "1"]) == 0
    out = capsys.readouterr().out
    stage1 = re.search(r": stage 1 test recall@20 (\S+) \((\d+) epochs\)", out)
    assert stage1 is not None and 0.0 < float(stage1.group(1)) <= 1.0 and 1 <= int(stage1.group(2)) <= 2
    lines = out.splitlines()
    head = next(k for k, ln in enumerate(lines) if ln.split() == ["alpha", "test", "R@20", "weight", "AUC", "epochs"])
    rows = [ln.split() for ln in lines[head + 1:]]
    assert [r[0] for r in rows] == ["0", "1"]
    for _alpha, recall, auc, epochs in rows:
        assert 0.0 < float(recall) <= 1.0 and math.isfinite(float(auc)) and 0.0 <= float(auc) <= 1.0
        assert 1 <= int(epochs) <= 2
