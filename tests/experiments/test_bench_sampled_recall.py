"""experiments/bench_sampled_recall.py on the tiny dataset: a full and a sampled run, and their gap."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scripts_helpers import SMALL, load_script


def test_full_and_sampled_runs_and_their_gap(capsys: pytest.CaptureFixture, tiny_data: str, tmp_path: Path) -> None:
    """Each mode prints its test metrics and writes a summary; the gap line matches them and the exit code."""
    tool = load_script("experiments/bench_sampled_recall.py")
    out_dir = tmp_path / "runs"
    rc = tool.main(["--data", tiny_data, "--out", str(out_dir), "--fanouts", "{ui: [3, 3], iu: [3, 3], ii: [3], uu: [5]}",
                    "--set", *SMALL, "train.max_epochs=2"])
    out = capsys.readouterr().out
    recall = {}
    for mode in ("full", "sampled"):
        m = re.search(rf"^{mode}\s+test recall@20 (\S+)  ndcg@20 (\S+)", out, re.M)
        assert m is not None, out
        recall[mode] = json.loads((out_dir / mode / "summary.json").read_text())["test"]["recall@20"]
        assert float(m.group(1)) == pytest.approx(recall[mode], abs=1e-4)
        assert 0.0 < recall[mode] <= 1.0 and 0.0 < float(m.group(2)) <= 1.0
    gap = re.search(r"relative gap of sampled vs full test recall@20: (\S+)%", out)
    assert gap is not None
    expected = (recall["sampled"] - recall["full"]) / recall["full"]
    assert float(gap.group(1)) / 100 == pytest.approx(expected, abs=1e-4)
    assert rc == (0 if abs(float(gap.group(1))) <= 3.0 else 1)
