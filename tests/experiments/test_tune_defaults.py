"""experiments/tune_defaults.py on a tiny staged search: the chosen, the runner-up and the wo_cal reference."""

from __future__ import annotations

import csv

import pytest
import yaml

from margo_dist.data.synth import write_synthetic
from margo_dist.tune.search import run_search
from margo_dist.tune.space import load_search

from scripts_helpers import REPO, SMALL, TINY, load_script

ray = pytest.importorskip("ray")
tool = load_script("experiments/tune_defaults.py")


def test_the_table_ranks_by_validation_and_measures_auc_against_the_reference(tmp_path, capsys):
    data = tmp_path / "data"
    write_synthetic(TINY, str(data), "mmrec")
    body = {"train_config": str(REPO / "configs/default.yaml"),
            "overrides": [f"data.path={data}", *SMALL, "train.max_epochs=2"],
            "space": {"model.alpha": {"grid": [0.01, 1.0]}}, "asha": {"enabled": False},
            "dir": str(tmp_path / "search")}
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(body))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_search(load_search(str(tmp_path / "search.yaml")), log=lambda _m: None)
    finally:
        ray.shutdown()
    capsys.readouterr()
    tool.main([str(tmp_path / "search")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| setting | model.alpha | valid recall@20 | test recall@20 | weight AUC")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    assert [r[0] for r in rows] == ["chosen", "runner-up", "wo_cal, α = 0 (same stage 1)"]
    with open(tmp_path / "search" / "trials.csv") as fh:
        trials = [t for t in csv.DictReader(fh) if t["phase"] == "stage2"]
    best = max(trials, key=lambda t: float(t["valid_recall@20"]))
    assert float(rows[0][1]) == float(best["model.alpha"])
    assert float(rows[0][2]) == pytest.approx(float(best["valid_recall@20"]), abs=1e-4)
    assert rows[2][-1] == "+0.0000"
    for row in rows:
        auc, diff = float(row[4]), float(row[-1])
        assert 0 <= auc <= 1 and diff == pytest.approx(auc - float(rows[2][4]), abs=2e-4)
        lo, hi = (float(x) for x in row[5].split("-"))
        assert 0 <= lo <= hi <= 1
