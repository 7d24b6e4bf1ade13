"""The real training entry point on tiny synthetic data: outputs, variants, resume."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from margo_dist.config import load_config
from margo_dist.data.synth import SynthSpec, write_synthetic
from margo_dist.train import loop
from margo_dist.train.loop import Trainer, load_training_data
from margo_dist.train.entry import train
from margo_dist.train.report import evaluate_run, recommend, report

TINY = SynthSpec(n_users=120, n_items=80, n_interactions=1200, modality_dims={"image": 12, "text": 8}, seed=0)


def cfg_for(data_dir: str, run_dir: str, *extra: str):
    return load_config("configs/default.yaml", [
        f"data.path={data_dir}", f"run.dir={run_dir}", "train.max_epochs=2", "train.batch_size=256",
        "train.progress=false", "model.dim=8", "graph.user_k=5", "graph.item_k=3", *extra])


def test_margo_run_writes_every_output(data_dir, tmp_path):
    run = str(tmp_path / "run")
    summary = train(cfg_for(data_dir, run), log=lambda _m: None)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["test"] == summary["test"]
    assert set(on_disk["stages"]) == {"pretrain", "calibrate"}
    for key in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"):
        assert 0.0 <= on_disk["valid"][key] <= 1.0 and 0.0 <= on_disk["test"][key] <= 1.0
    assert 0.0 <= on_disk["weight_auc"] <= 1.0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # stage 2 evaluates its starting state as epoch 0 (train.eval_stage_start, on by default)
    assert [(r["stage"], r["epoch"]) for r in lines] == [("pretrain", 1), ("pretrain", 2), ("calibrate", 0),
                                                         ("calibrate", 1), ("calibrate", 2)]
    assert "train_loss" not in lines[2] and on_disk["best_epoch"] == on_disk["stages"]["calibrate"]["best_epoch"]
    weights = pq.read_table(str(tmp_path / "run" / "item_weights.parquet"))
    assert weights.column_names == ["item_id", "image", "text"]
    w = np.stack([weights.column("image").to_numpy(), weights.column("text").to_numpy()], 1)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
    assert (tmp_path / "run" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "run" / "weight_hist.png").exists()
    assert (tmp_path / "run" / "config.yaml").exists()

    again = evaluate_run(run)
    for key, value in summary["test"].items():
        assert again["test"][key] == pytest.approx(value, abs=1e-6)

    out = str(tmp_path / "rec.parquet")
    rows = recommend(run, 5, out)
    rec = pq.read_table(out).to_pydict()
    assert rows == 120 * 5 == len(rec["user_id"])
    trainer = Trainer(cfg_for(data_dir, run), load_training_data(cfg_for(data_dir, run)))
    indptr, indices = trainer.data.train_csr
    for u, i in zip(rec["user_id"], rec["item_id"]):
        assert i not in set(indices[indptr[u]:indptr[u + 1]].tolist())
    text = report(run, top=3)
    assert "final test" in text and "most reliable 'image'" in text and "least reliable 'image'" in text and "\nmost reliable 'text'" not in text


@pytest.mark.parametrize("variant,extra", [
    ("wo_weight", []), ("wo_cal", ["model.alpha=0"]), ("wo_two_stage", []), ("wo_nograd", []),
    ("dragon", []), ("lightgcn", []), ("bpr_mf", []), ("margo", ["data.modalities=[text]"]),
])
def test_every_variant_trains(data_dir, tmp_path, variant, extra):
    summary = train(cfg_for(data_dir, str(tmp_path / variant), f"model.variant={variant}", *extra),
                    log=lambda _m: None)
    assert summary["variant"] == variant
    assert summary["test"]["recall@20"] > 0.0
    has_weights = (tmp_path / variant / "item_weights.parquet").exists()
    assert has_weights == (variant in ("wo_cal", "wo_two_stage", "wo_nograd", "margo"))


def test_resume_after_a_crash_gives_the_same_result(data_dir, tmp_path, monkeypatch):
    extra = ("train.max_epochs=3", "run.checkpoint_every=1")
    straight = train(cfg_for(data_dir, str(tmp_path / "a"), *extra), log=lambda _m: None)

    calls = {"n": 0}
    original = Trainer.train_epoch

    def crashing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # second epoch of stage 2
            raise KeyboardInterrupt("simulated crash")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(loop.Trainer, "train_epoch", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(data_dir, str(tmp_path / "b"), *extra), log=lambda _m: None)
    monkeypatch.setattr(loop.Trainer, "train_epoch", original)
    messages: list[str] = []
    resumed = train(cfg_for(data_dir, str(tmp_path / "b"), *extra), log=messages.append)
    assert any(m.startswith("resuming") for m in messages)
    for key, value in straight["test"].items():
        assert resumed["test"][key] == pytest.approx(value, abs=1e-6)
    assert resumed["weight_auc"] == pytest.approx(straight["weight_auc"], abs=1e-6)


def test_sampled_training_improves_recall(tmp_path):
    from margo_dist.data.dataset import VALID

    path = str(tmp_path / "data")
    write_synthetic(SynthSpec(n_users=200, n_items=300, n_interactions=3000,
                              modality_dims={"image": 12, "text": 8}, seed=0), path, "mmrec")
    cfg = cfg_for(path, str(tmp_path / "s"), "train.mode=sampled", "model.variant=wo_weight",
                  "train.max_epochs=6", "train.lr=0.01", "model.dim=16", "sampler.num_workers=1",
                  "sampler.fanouts={ui: [4, 4], iu: [4, 4], ii: [2], uu: [3]}")
    trainer = Trainer(cfg, load_training_data(cfg), log=lambda _m: None)
    before = trainer.evaluate("pretrain", VALID)["recall@20"]
    summary = trainer.fit()
    assert trainer.neighbour_sampler is not None
    assert summary["valid"]["recall@20"] > before + 0.03


def test_stage_two_from_another_runs_pretraining(data_dir, tmp_path):
    first = train(cfg_for(data_dir, str(tmp_path / "a")), log=lambda _m: None)
    messages: list[str] = []
    second = train(cfg_for(data_dir, str(tmp_path / "b"), "model.variant=wo_cal", "model.alpha=0",
                           f"run.pretrained={tmp_path / 'a'}"), log=messages.append)
    assert any("taken from" in m for m in messages)
    assert second["stages"]["pretrain"] == first["stages"]["pretrain"]
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in lines] == ["pretrain"] * 2 + ["calibrate"] * 3
    assert all("weight_auc" in r for r in lines if r["stage"] == "calibrate")
    with pytest.raises(Exception, match="model.dim=8, this run has 16"):
        train(cfg_for(data_dir, str(tmp_path / "c"), "model.dim=16", f"run.pretrained={tmp_path / 'a'}"),
              log=lambda _m: None)


def test_sampled_mode_runs_every_encoder_with_default_fanouts(data_dir, tmp_path):
    for variant in ("bpr_mf", "lightgcn"):
        summary = train(cfg_for(data_dir, str(tmp_path / variant), "train.mode=sampled", f"model.variant={variant}",
                                "sampler.num_workers=0", "train.max_epochs=1"), log=lambda _m: None)
        assert summary["test"]["recall@20"] > 0.0


def test_weight_tables_can_have_their_own_learning_rate(data_dir, tmp_path):
    cfg = cfg_for(data_dir, str(tmp_path / "w"), "train.weight_lr=0.05")
    trainer = Trainer(cfg, load_training_data(cfg), log=lambda _m: None)
    groups = {g["name"]: g for g in trainer.new_optimizer().param_groups}
    assert {k: g["lr"] for k, g in groups.items()} == {"dense": cfg.train.lr, "tables": cfg.train.lr, "weights": 0.05}
    assert groups["weights"]["params"] == [trainer.model.theta.weight]
    model = trainer.model
    assert groups["tables"]["params"] == [t.weight for t in model.encoder.preferences]
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    plain = Trainer(cfg_for(data_dir, str(tmp_path / "p"), "train.weight_lr=0"), trainer.data, log=lambda _m: None)
    assert {g["lr"] for g in plain.new_optimizer().param_groups} == {cfg.train.lr}


def test_wo_cal_ignores_alpha_with_a_warning(data_dir, tmp_path):
    default, messages = {}, []
    for name, extra in (("default", []), ("zero", ["model.alpha=0"]), ("one", ["model.alpha=1"])):
        log = messages.append if name == "one" else (lambda _m: None)
        default[name] = train(cfg_for(data_dir, str(tmp_path / name), "model.variant=wo_cal", *extra), log=log)
    for name in ("default", "one"):
        assert default[name]["test"] == default["zero"]["test"]
        assert default[name]["weight_auc"] == default["zero"]["weight_auc"]
    assert sum("model.alpha=1 is ignored" in m for m in messages) == 1


def stage_two_from(data_dir: str, tmp_path, *extra: str, log=lambda _m: None) -> dict:
    """A MARGO run's stage 1 (10 epochs), then stage 2 in another folder from that stage 1."""
    first = tmp_path / "stage1"
    train(cfg_for(data_dir, str(first), "train.max_epochs=10", "train.lr=0.01"), log=lambda _m: None)
    return train(cfg_for(data_dir, str(tmp_path / "stage2"), f"run.pretrained={first}", *extra),
                 log=log), json.loads((first / "summary.json").read_text())


def test_stage_two_that_only_hurts_keeps_its_starting_state(data_dir, tmp_path):
    # a learning rate of 10 (θ's too: weight_lr 0) wrecks a trained model in one epoch (at tau
    # 0.1; at tau 5 this tiny run recovers by epoch 3); θ = 0 makes the start uniform weights
    messages: list[str] = []
    summary, first = stage_two_from(data_dir, tmp_path, "train.lr=10", "train.weight_lr=0", "model.tau=0.1",
                                    "model.theta_init_std=0", "train.max_epochs=3", log=messages.append)
    assert summary["best_epoch"] == 0 == summary["stages"]["calibrate"]["best_epoch"]
    # one line per evaluation: epoch n/max, the best marked, patience counting the evaluations since
    epochs = [m for m in messages if m.startswith("[calibrate] epoch")]
    assert [m.split("  ")[0] for m in epochs] == [f"[calibrate] epoch {n}/3" for n in range(4)]
    assert " * " in epochs[0] and [m.split("patience ")[1][:4] for m in epochs] == ["0/20", "1/20", "2/20", "3/20"]
    lines = [json.loads(x) for x in (tmp_path / "stage2" / "metrics.jsonl").read_text().splitlines()]
    calibrate = [r for r in lines if r["stage"] == "calibrate"]
    assert [r["epoch"] for r in calibrate] == [0, 1, 2, 3] and calibrate[0]["best"]
    assert all(r["valid"]["recall@20"] < calibrate[0]["valid"]["recall@20"] for r in calibrate[1:])
    # uniform weights rescale every score by 1/M: the ranking, so every metric, is stage 1's best
    assert summary["test"] == first["stages"]["pretrain"]["test"]
    assert summary["valid"] == first["stages"]["pretrain"]["valid"]


def test_the_paper_protocol_is_one_override_away(data_dir, tmp_path):
    summary, _ = stage_two_from(data_dir, tmp_path, "train.eval_stage_start=false", "train.lr=10",
                                "train.weight_lr=0", "model.theta_init_std=0")
    lines = [json.loads(x) for x in (tmp_path / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["stage"] == "calibrate"] == [1, 2]
    assert summary["best_epoch"] >= 1


def test_a_stage_one_run_then_stage_two_from_it_equals_the_whole_run(data_dir, tmp_path):
    """The staged search's split: ``run.stop_after=pretrain``, then ``run.pretrained`` (validation only)."""
    whole = train(cfg_for(data_dir, str(tmp_path / "whole")), log=lambda _m: None)
    first = train(cfg_for(data_dir, str(tmp_path / "s1"), "run.stop_after=pretrain", "train.test_split=false"),
                  log=lambda _m: None)
    assert list(first["stages"]) == ["pretrain"] and first["test"] == {}
    assert not (tmp_path / "s1" / "item_weights.parquet").exists()
    messages: list[str] = []
    second = train(cfg_for(data_dir, str(tmp_path / "s2"), f"run.pretrained={tmp_path / 's1'}",
                           "train.test_split=false"), log=messages.append)
    assert any("test split not read" in m for m in messages)
    assert second["test"] == {} and all(r["test"] == {} for r in second["stages"].values())
    assert second["valid"] == pytest.approx(whole["valid"], abs=1e-9)
    assert second["weight_auc"] == pytest.approx(whole["weight_auc"], abs=1e-9)
    with pytest.raises(Exception, match=r"run.stop_after='dragon' is not a stage of model.variant=margo"):
        train(cfg_for(data_dir, str(tmp_path / "bad"), "run.stop_after=dragon"), log=lambda _m: None)


def test_bfloat16_precision_trains_the_projection_in_bf16_and_auto_keeps_float32(data_dir, tmp_path, monkeypatch):
    from margo_dist import precision

    messages: list[str] = []
    cfg = cfg_for(data_dir, str(tmp_path / "bf16"), "train.precision=bfloat16", "data.feature_dtype=bfloat16")
    trainer = Trainer(cfg, load_training_data(cfg), log=messages.append)
    assert "projection precision: bfloat16 (as configured)" in messages
    assert {p.compute_dtype for p in trainer.model.encoder.projections} == {torch.bfloat16}
    assert {f.dtype for f in trainer.features} == {torch.bfloat16}
    summary = trainer.fit()
    assert summary["test"]["recall@20"] > 0.0
    assert "precision: bfloat16" in (tmp_path / "bf16" / "config.yaml").read_text()

    monkeypatch.setattr(precision, "native_bf16", lambda _device: (True, "CPU flags avx512_bf16"))
    messages = []
    cfg = cfg_for(data_dir, str(tmp_path / "auto"), "train.precision=auto")
    trainer = Trainer(cfg, load_training_data(cfg), log=messages.append)
    assert {p.compute_dtype for p in trainer.model.encoder.projections} == {torch.float32}
    assert any("avx512_bf16, but train.precision=auto keeps float32" in m for m in messages)
    assert cfg.train.precision == "float32"
