"""Checkpoint files (dist/checkpoint.py): a finished run is not loaded again, and an old
whole-table checkpoint is named instead of half-read."""

from __future__ import annotations

import shutil

import pytest
import torch

from margo_dist.config import load_config
from margo_dist.data.synth import SynthSpec, write_synthetic
from margo_dist.errors import MargoError
from margo_dist.dist import checkpoint
from margo_dist.train.entry import train
from margo_dist.train.rundir import CHECKPOINT, RunDir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("ckpt") / "data")
    write_synthetic(SynthSpec(n_users=80, n_items=60, n_interactions=800, modality_dims={"image": 6, "text": 4},
                              seed=2), path, "mmrec")
    return path


def cfg_for(data_dir: str, run_dir: str):
    return load_config("configs/default.yaml", [f"data.path={data_dir}", f"run.dir={run_dir}", "model.dim=4",
                                                "graph.user_k=3", "graph.item_k=2", "train.max_epochs=2",
                                                "train.batch_size=128", "train.progress=false", "run.plots=false"])


def test_a_finished_run_returns_its_summary_without_reading_the_rows(data_dir, tmp_path):
    run = tmp_path / "run"
    first = train(cfg_for(data_dir, str(run)), log=lambda _m: None)
    assert [p.name for p in (run / checkpoint.SHARDS).iterdir()] != []
    shutil.rmtree(run / checkpoint.SHARDS)  # a rerun that tried to load the tables would fail now
    messages: list[str] = []
    again = train(cfg_for(data_dir, str(run)), log=messages.append)
    assert again == first
    assert any("already complete" in m for m in messages)


def test_a_whole_table_checkpoint_of_an_unfinished_run_is_named(data_dir, tmp_path):
    run = RunDir(str(tmp_path / "run"))
    train(cfg_for(data_dir, run.url), log=lambda _m: None)
    record = run.load_state(CHECKPOINT)
    record["coordinator"]["done"] = False
    record.pop("seq")  # the layout before per-worker files: no sequence number, whole tables
    run.save_state(CHECKPOINT, record)
    with pytest.raises(MargoError, match="whole tables .* delete it, or set run.resume=false"):
        train(cfg_for(data_dir, run.url), log=lambda _m: None)


def test_every_table_row_is_in_one_shard_file_with_its_id(data_dir, tmp_path):
    run = tmp_path / "run"
    train(cfg_for(data_dir, str(run)), log=lambda _m: None)
    record = RunDir(str(run)).load_state(CHECKPOINT)
    shard = RunDir(str(run)).load_state(checkpoint.shard_file(record["seq"], 0))["tables"]
    assert set(shard) == {"encoder.preferences.0.weight", "encoder.preferences.1.weight", "theta.weight"}
    for name, entry in shard.items():
        assert torch.equal(entry["ids"], torch.arange(entry["weight"].shape[0])), name  # local mode: every row
        assert name not in record["model"]  # the commit record holds the dense parameters only
        assert set(entry["moments"]) == {"exp_avg", "exp_avg_sq"}, name
