"""experiments/table_stage_start.py on tiny data: every row trains, stage-2 rows start from the seed's MARGO run."""

from __future__ import annotations

import json
import os

from margo_dist.data.synth import SynthSpec, write_synthetic
from scripts_helpers import load_script


def test_table_over_one_seed(tmp_path, capsys):
    data = str(tmp_path / "data")
    write_synthetic(SynthSpec(n_users=120, n_items=80, n_interactions=1200, modality_dims={"image": 12, "text": 8},
                              seed=0), data, "mmrec")
    runs = str(tmp_path / "runs")
    tool = load_script("experiments/table_stage_start.py")
    tool.main(["--data", data, "--modalities", "image,text", "--runs", runs, "--seeds", "0", "--jobs", "2",
               "--set", "train.max_epochs=1", "model.dim=8", "graph.user_k=5", "graph.item_k=3",
               "train.batch_size=256", "train.threads=1", "run.plots=false"])
    out = capsys.readouterr().out
    for name in ("w/o weight (= stage 1)", "MARGO (rule off, scale M)", "w/o L_cal (rule on)", "LightGCN"):
        assert f"| {name} |" in out
    off = json.load(open(os.path.join(runs, "seed0", "margo_off", "summary.json")))
    first = json.load(open(os.path.join(runs, "seed0", "margo", "summary.json")))
    assert off["stages"]["pretrain"] == first["stages"]["pretrain"]  # the same stage 1
    assert off["best_epoch"] == 1  # the rule off: no epoch-0 candidate
