"""The real entry point: ``margo-dist train ... dist.workers=2`` through Ray Train's TorchTrainer.

Two workers on a local Ray instance that this test starts and stops, against a local
run of the same config: the same metrics, the local run-folder layout written once, and
``evaluate`` on the distributed run folder in local mode.
"""

from __future__ import annotations

import json
import os

import pytest

from margo_dist.config import load_config
from margo_dist.data.synth import SynthSpec, write_synthetic
from margo_dist.train.entry import train
from margo_dist.train.report import evaluate_run

ray = pytest.importorskip("ray")


def cfg_for(data: str, run: str, *extra: str):
    return load_config("configs/default.yaml", [
        f"data.path={data}", f"run.dir={run}", "train.max_epochs=2", "model.dim=8", "graph.user_k=5",
        "graph.item_k=3", "train.batch_size=256", "train.progress=false", "train.threads=1", *extra])


def test_two_ray_workers_train_what_one_process_trains(tmp_path):
    data = str(tmp_path / "data")
    write_synthetic(SynthSpec(n_users=120, n_items=80, n_interactions=1200, modality_dims={"image": 12, "text": 8},
                              seed=0), data, "mmrec")
    local = train(cfg_for(data, str(tmp_path / "local")), log=lambda _m: None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        messages: list[str] = []
        dist = train(cfg_for(data, str(tmp_path / "dist"), "dist.workers=2"), log=messages.append)
    finally:
        ray.shutdown()
    assert any("2 Ray Train workers" in m for m in messages)
    # every worker reported its checkpoints to Ray Train (the last one: a pointer per worker)
    reported = [m.split(": ", 1)[1] for m in messages if m.startswith("last checkpoint reported to Ray Train")]
    assert len(reported) == 1
    assert sorted(os.listdir(reported[0])) == ["rank0.json", "rank1.json"]
    pointer = json.loads(open(os.path.join(reported[0], "rank1.json")).read())
    assert (tmp_path / "dist" / pointer["rows"]).exists() and pointer["commit"] == "checkpoint.pt"
    # the run's one coordinator actor took the workers through both stages
    assert any(m.endswith("-coordinator: stages ['pretrain', 'calibrate'] done=True") for m in messages), messages
    for split in ("valid", "test"):
        for key, value in local[split].items():
            assert dist[split][key] == pytest.approx(value, abs=1e-6), (split, key)
    assert dist["weight_auc"] == pytest.approx(local["weight_auc"], abs=1e-6)
    run = tmp_path / "dist"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "item_weights.parquet", "learning_curves.png",
                 "best_pretrain.pt", "best_calibrate.pt", "checkpoint.pt"):
        assert (run / name).exists(), name
    # one file of rows per worker, in the folder of the last checkpoint
    assert [sorted(p.name for p in d.iterdir()) for d in (run / "checkpoint-shards").iterdir()] == [["rank0.pt",
                                                                                                   "rank1.pt"]]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [("pretrain", 1), ("pretrain", 2), ("calibrate", 0),
                                                           ("calibrate", 1), ("calibrate", 2)]
    again = evaluate_run(str(run))  # the whole-table state written by 2 workers, read by one process
    for key, value in dist["test"].items():
        assert again["test"][key] == pytest.approx(value, abs=1e-6)


def test_two_ray_workers_in_sampled_mode_train_on_their_shards_what_one_process_trains(tmp_path):
    """Sampled mode at fan-out -1 through the real entry point: each worker reads its shard's
    receptive field and feature rows (the driver makes the shard set), samples blocks for its
    own users and items, and evaluates over its field. The metrics are those of the local
    sampled run at fan-out -1 (whose steps are the full-graph steps, with the same draws: a
    sampled epoch also draws its sampling seed), and ``evaluate`` of the run folder in one
    process gives the workers' test metrics."""
    data = str(tmp_path / "data")
    write_synthetic(SynthSpec(n_users=120, n_items=80, n_interactions=1200, modality_dims={"image": 12, "text": 8},
                              seed=0), data, "mmrec")
    sampled = ["train.mode=sampled", "sampler.num_workers=0",
               "sampler.fanouts={ui: [-1, -1], iu: [-1, -1], ii: [-1], uu: [-1]}"]
    local = train(cfg_for(data, str(tmp_path / "local"), *sampled), log=lambda _m: None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        dist = train(cfg_for(data, str(tmp_path / "dist"), "dist.workers=2", *sampled), log=lambda _m: None)
    finally:
        ray.shutdown()
    made = (tmp_path / "data").glob(".margo_cache/shards-*/part*/field/train_user.npy")
    fields = sorted(p.parent.parent.name for p in made)
    assert fields == ["part0", "part1"]
    for split in ("valid", "test"):
        for key, value in local[split].items():
            assert dist[split][key] == pytest.approx(value, abs=1e-6), (split, key)
    assert dist["weight_auc"] == pytest.approx(local["weight_auc"], abs=1e-4)
    again = evaluate_run(str(tmp_path / "dist"))  # one process, the whole graph, the workers' best state
    for key, value in dist["test"].items():
        assert again["test"][key] == pytest.approx(value, abs=1e-6)
