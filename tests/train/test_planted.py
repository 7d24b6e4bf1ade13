"""Planted reliability at a small size: MARGO's weights find the noisy modalities.

The full comparison against wo_cal over seeds at a larger size is
``experiments/bench_reliability.py``; this is the bounded form that CI runs.
"""

from __future__ import annotations

from margo_dist.config import load_config
from margo_dist.data.synth import SynthSpec, write_synthetic
from margo_dist.train.entry import train


def test_margo_weights_detect_planted_noise_and_stage_two_helps(tmp_path):
    data = str(tmp_path / "data")
    write_synthetic(SynthSpec(n_users=800, n_items=400, n_interactions=9600, modality_dims={"image": 32, "text": 16},
                              seed=0, unreliable_frac=0.3), data)
    cfg = load_config("configs/default.yaml", [f"data.path={data}", f"run.dir={tmp_path / 'run'}", "model.dim=32",
                                               "train.patience=10", "train.max_epochs=80", "train.progress=false",
                                               "run.plots=false", "train.threads=1"])
    summary = train(cfg, log=lambda _m: None)
    # chance is 0.5; the weights rank noisy (item, modality) pairs below clean ones
    assert summary["weight_auc"] >= 0.7
    stages = summary["stages"]
    # stage 1 alone is the wo_weight variant: weighting improves the ranking
    assert stages["calibrate"]["test"]["recall@20"] > stages["pretrain"]["test"]["recall@20"]
