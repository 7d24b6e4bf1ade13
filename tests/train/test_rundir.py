"""A run folder is one experiment with one writer: identity, refusal, moving aside, the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from margo_dist.cli import main
from margo_dist.config import load_config
from margo_dist.data.synth import SynthSpec, write_synthetic
from margo_dist.errors import MargoError
from margo_dist.train.loop import Trainer
from margo_dist.train.entry import train
from margo_dist.train.rundir import LOCK, RunDir, RunLock, claim, fingerprint, identity

TINY = SynthSpec(n_users=60, n_items=40, n_interactions=600, modality_dims={"image": 6, "text": 4}, seed=0)


def args_for(data_dir: str, run_dir: str, *extra: str) -> list[str]:
    return [f"data.path={data_dir}", f"run.dir={run_dir}", "train.max_epochs=1", "train.batch_size=256",
            "train.progress=false", "model.dim=8", "graph.user_k=5", "graph.item_k=3", "run.plots=false", "train.topk=[10, 20]", *extra]


def cfg_for(data_dir: str, run_dir: str, *extra: str):
    return load_config("configs/default.yaml", args_for(data_dir, run_dir, *extra))


def test_identity_holds_what_changes_the_result_and_nothing_else(tmp_path):
    base = cfg_for("data", str(tmp_path / "a"))
    same = cfg_for("data", str(tmp_path / "b"), "run.checkpoint_every=3", "train.threads=2", "dist.workers=2",
                   "train.eval_user_chunk=7", "run.resume=false")
    assert fingerprint(base) == fingerprint(same)
    assert fingerprint(cfg_for("data", str(tmp_path / "a"), "train.precision=auto")) == fingerprint(base)
    assert identity(base)["data.path"] == os.path.abspath("data")
    for override in ("model.alpha=1.0", "train.precision=bfloat16", "data.feature_dtype=bfloat16", "train.lr=0.01", "train.max_epochs=3", "data.path=other",
                     "sampler.fanouts={ui: [5, 5], iu: [5, 5], ii: [10], uu: [20]}", "run.pretrained=p"):
        assert fingerprint(cfg_for("data", str(tmp_path / "a"), override)) != fingerprint(base), override


def test_a_finished_run_refuses_another_config_and_moves_aside_on_request(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    first = train(cfg_for(data_dir, str(run)), log=lambda _m: None)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}

    # the same experiment with another checkpoint interval: its finished result, not a refusal
    messages: list[str] = []
    again = train(cfg_for(data_dir, str(run), "run.checkpoint_every=2"), log=messages.append)
    assert again["test"] == first["test"] and any("already complete" in m for m in messages)

    code = main(["train", "--config", "configs/default.yaml", *args_for(data_dir, str(run), "model.alpha=1.0")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "holds another experiment" in err[0] and "model.alpha=0.1 there, 1.0 now" in err[0]
    assert "run.resume=false" in err[0] and "Traceback" not in err[0]
    after = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert set(after) == set(before) - {LOCK} and all(after[k] == before[k] for k in after if k != "config.yaml")

    messages = []
    fresh = train(cfg_for(data_dir, str(run), "model.alpha=1.0", "run.resume=false"), log=messages.append)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(moved) == 1 and any(str(moved[0]) in m for m in messages)
    assert json.loads((moved[0] / "summary.json").read_text())["test"] == first["test"]
    assert RunDir(str(run)).load_config().model.alpha == 1.0 and fresh["test"] != first["test"]
    assert not (run / LOCK).exists()


def test_a_killed_run_does_not_resume_on_other_data(data_dir, tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    original = Trainer.train_epoch

    def killed_in_epoch_two(self, stage, *args, **kwargs):
        if self.coordinator.progress.epoch == 2:
            raise KeyboardInterrupt("killed")
        return original(self, stage, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(data_dir, run, "train.max_epochs=2"), log=lambda _m: None)
    assert RunDir(run).exists("checkpoint.pt") and not RunDir(run).exists(LOCK)
    other = str(tmp_path / "other")
    write_synthetic(TINY, other, "mmrec")
    with pytest.raises(MargoError, match=r"data.path='.*tiny' there, '.*other' now"):
        train(cfg_for(other, run, "train.max_epochs=2"), log=lambda _m: None)
    with pytest.raises(MargoError, match=r"model.dim=8 there, 16 now"):  # no raw size mismatch
        train(cfg_for(data_dir, run, "train.max_epochs=2", "model.dim=16"), log=lambda _m: None)
    with pytest.raises(MargoError, match=r"train.max_epochs=2 there, 3 now"):
        train(cfg_for(data_dir, run, "train.max_epochs=3"), log=lambda _m: None)


def test_a_run_that_trained_nothing_does_not_hold_the_folder(data_dir, tmp_path):
    run = str(tmp_path / "run")
    with pytest.raises(MargoError):
        train(cfg_for(str(tmp_path / "missing"), run), log=lambda _m: None)
    assert RunDir(run).exists("config.yaml")  # written first, then the data was not found
    train(cfg_for(data_dir, run), log=lambda _m: None)
    assert RunDir(run).load_config().data.path == data_dir


def test_outputs_without_their_config_are_refused_and_a_users_own_files_kept(data_dir, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train.log").write_text("mine")
    (tmp_path / "run" / "summary.json").write_text("{}")
    with pytest.raises(MargoError, match="holds summary.json but no config.yaml, so what made them is unknown"):
        train(cfg_for(data_dir, str(tmp_path / "run")), log=lambda _m: None)
    (tmp_path / "run" / "summary.json").unlink()
    train(cfg_for(data_dir, str(tmp_path / "run")), log=lambda _m: None)
    assert (tmp_path / "run" / "train.log").read_text() == "mine"
    assert (tmp_path / "run" / "summary.json").read_text() != "{}"


def test_one_writer_per_run_folder_and_a_dead_writers_lock_is_taken_over(data_dir, tmp_path):
    run = RunDir(str(tmp_path / "run"))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.makedirs(run.url)
        lock = RunLock(run)
        with open(run.path(LOCK), "w") as fh:
            json.dump({**lock.mine, "pid": holder.pid}, fh)
        with pytest.raises(MargoError, match=f"is in use by pid {holder.pid} on .* delete .*{LOCK}"):
            train(cfg_for(data_dir, run.url), log=lambda _m: None)
        assert os.listdir(run.url) == [LOCK]  # nothing read or written
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(UserWarning, match=f"pid {holder.pid} .* no longer running; taking the folder over"):
        train(cfg_for(data_dir, run.url), log=lambda _m: None)
    assert run.exists("summary.json") and not run.exists(LOCK)


def test_a_second_lock_on_a_held_folder_fails_and_the_first_is_released(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    first = RunLock(run)
    first.acquire()
    with pytest.raises(MargoError, match=f"in use by pid {os.getpid()}"):
        RunLock(run).acquire()
    first.release()
    assert not run.exists(LOCK)


def test_a_read_only_run_folder_is_named(data_dir, tmp_path, monkeypatch):
    (tmp_path / "ro").mkdir()
    real_open = os.open

    def refusing_open(path, *args, **kwargs):  # what a read-only folder does to anyone but root
        if str(path).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(MargoError, match=r"run.dir=.*ro is not writable \(Permission denied\)"):
        train(cfg_for(data_dir, str(tmp_path / "ro")), log=lambda _m: None)
    (tmp_path / "file").write_text("")
    with pytest.raises(MargoError, match=r"run.dir=.*file/run cannot be a folder"):
        train(cfg_for(data_dir, str(tmp_path / "file" / "run")), log=lambda _m: None)


def test_stage_two_refuses_a_pretraining_on_other_data(data_dir, tmp_path):
    train(cfg_for(data_dir, str(tmp_path / "a"), "run.stop_after=pretrain"), log=lambda _m: None)
    with pytest.raises(MargoError, match=r"was trained on other data \(graph.item_k=3 there, 4 now\)"):
        train(cfg_for(data_dir, str(tmp_path / "b"), "graph.item_k=4", f"run.pretrained={tmp_path / 'a'}"),
              log=lambda _m: None)
