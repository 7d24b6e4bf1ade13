"""The search end to end on tiny data, on a Ray instance the test starts and stops.

- Four trials, two at a time, two epochs per stage, ASHA on validation Recall@20: the
  two trials with a learning rate too small to learn anything reach ASHA's first rung
  after the two good ones and are stopped there. best.yaml, the table and the plot are
  written, and no placement group or trial actor is left before Ray shuts down.
- A staged search whose driver is killed (SIGKILL, by its process group) after its first
  stage-2 trial finished, then run again: nothing finished is trained again, and the
  table has every trial once. The kill may cut Tune's in-place copy of its state file
  short: the rerun puts back the last complete copy the search kept.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from margo_dist.config import load_config
from margo_dist.data.synth import SynthSpec, write_synthetic
from margo_dist.tune.search import read_table, report, run_search
from margo_dist.tune.state import KEPT, keep_state, mend_state
from margo_dist.tune.space import load_search

ray = pytest.importorskip("ray")
REPO = Path(__file__).resolve().parents[2]
SPEC = SynthSpec(n_users=120, n_items=80, n_interactions=1200, modality_dims={"image": 12, "text": 8}, seed=0)


def search_file(tmp_path: Path, **fields) -> Path:
    data = tmp_path / "data"
    if not data.exists():
        write_synthetic(SPEC, str(data), "mmrec")
    body = {"train_config": str(REPO / "configs/default.yaml"),
            "overrides": [f"data.path={data}", "model.dim=8", "graph.user_k=5", "graph.item_k=3",
                          "train.batch_size=256", "train.max_epochs=2", "train.patience=5"],
            "max_concurrent_trials": 2, "asha": {"grace_period": 1, "reduction_factor": 2},
            "dir": str(tmp_path / "search"), **fields}
    body["overrides"] += body.pop("overrides_extra", [])
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_a_tiny_search_stops_the_weak_trials_and_writes_its_results(tmp_path):
    # batches of 64: one epoch at lr 0.01 gets valid Recall@20 0.51, at 1e-7 the initial 0.43
    path = search_file(tmp_path, space={"train.lr": {"grid": [0.01, 0.01, 1.0e-7, 1.0e-7]}},
                       overrides_extra=["train.batch_size=64"])
    search = load_search(str(path))
    ray.init(num_cpus=2, log_to_driver=False)
    messages: list[str] = []
    try:
        summary = run_search(search, log=messages.append)
        from ray.util.state import list_actors

        left = [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]
        assert left == [], left
        alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")])
        assert alive == [], [a.class_name for a in alive]
    finally:
        ray.shutdown()
    rows = read_table(search.dir)
    assert len(rows) == 4 and len({r["trial"] for r in rows}) == 4 and {r["phase"] for r in rows} == {"all"}
    # the planted data's weight AUC of each trial that reached stage 2, at its best epoch
    assert all(0 <= float(r["weight_auc"]) <= 1 for r in rows if r["stage"] == "calibrate")
    good = [r for r in rows if float(r["train.lr"]) > 1e-6]
    weak = [r for r in rows if float(r["train.lr"]) < 1e-6]
    assert all(r["status"] == "finished" and int(r["epochs"]) == 4 for r in good), good
    # both weak trials reach ASHA's first rung after the two good ones, and are stopped there
    assert all(r["status"] == "stopped early" and int(r["epochs"]) == 1 for r in weak), weak
    # selection on validation; the test split read once, for the chosen trial
    assert float(summary["best"]["keys"]["train.lr"]) > 1e-6
    assert summary["best"]["valid"]["recall@20"] == max(float(r["valid_recall@20"]) for r in rows)
    assert summary["best"]["valid_recomputed"]["recall@20"] == pytest.approx(summary["best"]["valid"]["recall@20"])
    assert 0 < summary["best"]["test"]["recall@20"] <= 1
    for r in rows:  # the trials themselves never scored the test split
        run_summary = Path(r["run"], "summary.json")
        if run_summary.exists():
            assert yaml.safe_load(run_summary.read_text())["test"] == {}
    best = load_config(os.path.join(search.dir, "best.yaml"))
    assert best.train.lr == summary["best"]["keys"]["train.lr"] and best.train.test_split
    assert messages[-1].startswith(f"next: margo-dist train --config {os.path.join(search.dir, 'best.yaml')} ")
    assert best.run.pretrained == "" and best.run.stop_after == ""
    png = Path(search.dir, "search.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    text = report(search.dir)
    lines = [line for line in text.splitlines() if line.startswith("all ")]
    values = [float(line.split()[3]) for line in lines]
    assert values == sorted(values, reverse=True) and len(values) == 4


def _starts(run: str) -> int:
    return len(Path(run, "trial_starts.txt").read_text().splitlines())


def terminated(phase: Path) -> set[str]:
    """Trial ids that a phase's saved experiment state records as finished (what a restore keeps)."""
    ids: set[str] = set()
    for state in phase.glob("experiment_state-*.json"):
        try:
            data = json.loads(state.read_text())
        except json.JSONDecodeError:  # being written
            continue
        for trial, _ in data["trial_data"]:
            trial = json.loads(trial)
            if trial["status"] == "TERMINATED":
                ids.add(trial["trial_id"])
    return ids


def finished_runs(search: Path) -> set[str]:
    """Run-folder names of the trials each phase's saved state records as finished."""
    return {f"{phase}-{t}" for phase in ("stage1", "stage2") for t in terminated(search / phase)}


def test_a_state_file_cut_short_by_a_kill_is_mended_from_its_kept_copy(tmp_path):
    phase = tmp_path / "stage2"
    phase.mkdir()
    state = phase / "experiment_state-2026-12-02_05-00-00.json"
    whole = json.dumps({"trial_data": [[json.dumps({"trial_id": "a", "status": "TERMINATED"}), "{}"]]})
    state.write_text(whole)
    seen: dict = {}
    keep_state(str(phase), seen)
    assert (phase / KEPT / state.name).read_text() == whole
    state.write_text(whole[: len(whole) // 2])  # the kill, mid-copy
    keep_state(str(phase), seen)  # a cut-off file is never kept
    assert (phase / KEPT / state.name).read_text() == whole
    said: list[str] = []
    mend_state(str(phase), log=said.append)
    assert state.read_text() == whole and terminated(phase) == {"a"} and "cut short" in said[0]
    # a cut-off file without a kept copy is moved aside, so Tune never picks it
    other = phase / "experiment_state-2026-12-02_06-00-00.json"
    other.write_text("{\"trial_da")
    mend_state(str(phase), log=said.append)
    assert not other.exists() and Path(f"{other}.unreadable").exists() and "moved aside" in said[1]
    assert state.read_text() == whole
    # the search algorithm's state is a pickle: complete when its opcodes reach STOP
    algo = phase / "basic-variant-state-2026-12-02_05-00-00.json"
    body = pickle.dumps({"counter": 3, "seed": [1, 2]})
    algo.write_bytes(body)
    keep_state(str(phase), seen)
    algo.write_bytes(body[:-3])
    mend_state(str(phase), log=said.append)
    assert algo.read_bytes() == body and pickle.loads(algo.read_bytes())["counter"] == 3


def test_a_killed_search_driver_resumes_without_training_a_finished_trial_again(tmp_path):
    path = search_file(tmp_path, space={"model.alpha": {"grid": [0.01, 0.1, 1.0]}}, max_concurrent_trials=1,
                       asha={"enabled": False})
    command = [sys.executable, "-m", "margo_dist.cli", "tune", "--config", str(path)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    runs = tmp_path / "search" / "runs"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        # the first stage-2 trial that Tune has recorded as finished in its saved state
        seen: set[str] = set()
        while not any(name.startswith("stage2-") for name in seen):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
            seen |= finished_runs(tmp_path / "search")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # the kill may cut Tune's in-place copy of its state short; the rerun mends that first
    # (idempotent), from a copy that may be one step older
    for phase in ("stage1", "stage2"):
        mend_state(str(tmp_path / "search" / phase), log=lambda _m: None)
    finished = finished_runs(tmp_path / "search")
    seen |= finished
    assert len(seen) >= 2 and "stage1" in {n.split("-")[0] for n in finished}
    assert all((runs / name / "summary.json").exists() for name in seen)
    trained = {name: len((runs / name / "metrics.jsonl").read_text().splitlines()) for name in seen}
    assert not (tmp_path / "search" / "trials.csv").exists()  # the driver died mid-search
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "restoring" in again.stdout
    # one line per trial epoch; Tune's result files are kept, its TensorBoard hint (a /tmp folder) is not shown
    epoch_lines = [line for line in again.stdout.splitlines() if line.startswith("[stage") and " epoch " in line]
    assert epoch_lines and len(epoch_lines) == len(set(epoch_lines)), again.stdout[-3000:]
    assert "tensorboard" not in (again.stdout + again.stderr).lower()
    assert list((tmp_path / "search" / "stage2").glob("*/result.json"))
    with open(tmp_path / "search" / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["phase"] for r in rows) == ["stage1", "stage2", "stage2", "stage2"]
    assert len({r["trial"] for r in rows}) == 4
    for name in finished:  # finished in the restored state: its process started once
        assert _starts(str(runs / name)) == 1, name
    for name in seen:  # finished at any time: not trained again
        assert len((runs / name / "metrics.jsonl").read_text().splitlines()) == trained[name], name
    assert all(r["status"] == "finished" for r in rows)


def test_a_trial_of_two_ray_train_workers_reports_to_tune_through_rank_zero(tmp_path):
    """``trial_workers: 2``: each trial fits a TorchTrainer whose TuneReportCallback feeds Tune."""
    path = search_file(tmp_path, space={"model.alpha": {"grid": [0.1]}}, max_concurrent_trials=1,
                       trial_workers=2, asha={"enabled": False}, overrides_extra=["train.threads=1"])
    search = load_search(str(path))
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)  # 2 workers + each trial's 0.01 CPU
    try:
        summary = run_search(search, log=lambda _m: None)
    finally:
        ray.shutdown()
    rows = read_table(search.dir)
    assert [r["phase"] for r in rows] == ["stage1", "stage2"] and all(r["status"] == "finished" for r in rows)
    for r in rows:  # both runs were trained by two workers: one file of rows per rank
        shards = list(Path(r["run"], "checkpoint-shards").glob("*/rank*.pt"))
        assert sorted(p.name for p in shards) == ["rank0.pt", "rank1.pt"], shards
    # what Tune heard from rank 0 is what the run folder records
    trial = Path(rows[1]["run"])
    records = [yaml.safe_load(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
    best = max((r for r in records if r["stage"] == "calibrate"), key=lambda r: r["valid"]["recall@20"])
    assert summary["best"]["valid"]["recall@20"] == pytest.approx(best["valid"]["recall@20"])
    assert summary["best"]["valid_recomputed"]["recall@20"] == pytest.approx(best["valid"]["recall@20"], abs=1e-6)


def test_a_trial_whose_run_had_finished_reports_its_result_once_without_training(tmp_path, monkeypatch):
    """Tune may restart a trial that finished just before the driver died, before Tune saved it
    as finished: the trial's run folder is complete, so it trains nothing and reports its result."""
    from ray import tune

    from margo_dist.config import to_dict
    from margo_dist.tune.search import run_trial

    search = load_search(str(search_file(tmp_path, space={})))
    cfg = search.train_base()
    cfg.train.test_split, cfg.train.progress, cfg.run.plots = False, False, False
    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda metrics, **_: reports.append(metrics))
    monkeypatch.setattr(tune, "get_context", lambda: type("Context", (), {"get_trial_id": lambda self: "t0"})())
    config = {"_train": to_dict(cfg), "_root": str(tmp_path / "search"), "_phase": "all", "model.alpha": 1.0}
    run_trial(config)
    first = list(reports)
    assert [(r["stage"], r["epochs_trained"]) for r in first][-1] == ("calibrate", 4)
    reports.clear()
    run_trial(config)  # the same trial again: its run is complete
    run = tmp_path / "search" / "runs" / "all-t0"
    assert len(reports) == 1 and reports[0]["stage"] == "calibrate" and reports[0]["epochs_trained"] == 4
    summary = yaml.safe_load((run / "summary.json").read_text())
    assert reports[0]["valid_recall@20"] == summary["valid"]["recall@20"]
    assert _starts(str(run)) == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 5  # nothing was trained again
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["alpha"] == 1.0


def test_a_tie_for_the_best_trial_is_warned_of_and_the_first_is_taken():
    from margo_dist.tune.search import _best

    rows = [{"trial": f"t{k}", "status": "finished", "stage": "calibrate", "valid_recall@20": v}
            for k, v in enumerate([0.25, 0.3, 0.3, 0.1])]
    rows.append({"trial": "t4", "status": "error", "stage": "calibrate", "valid_recall@20": 0.9})
    messages: list[str] = []
    assert _best(rows, "stage2", "recall@20", messages.append)["trial"] == "t1"
    assert messages == ["warning: search phase stage2: 2 of 4 trials tie at valid recall@20 0.3000 (t1, t2); "
                        "t1 is taken. The searched keys may not change this metric on this data (stage 2 may "
                        "never beat its starting state: docs/search.md)"]
    rows[2]["valid_recall@20"] = 0.29
    messages.clear()
    assert _best(rows, "stage2", "recall@20", messages.append)["trial"] == "t1" and messages == []


def test_a_grace_period_as_long_as_a_trial_stops_no_trial():
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from margo_dist.tune.search import asha_clock

    class Trial:
        def __init__(self, k: int) -> None:
            self.trial_id = str(k)

    def stopped_at(max_t: int, grace: int, epochs: int) -> list[int]:
        """The epochs at which ASHA stops four trials that report every epoch, the worst last."""
        asha = ASHAScheduler(time_attr="epochs_trained", metric="m", mode="max", max_t=max_t, grace_period=grace)
        trials = [Trial(k) for k in range(4)]
        for t in trials:
            asha.on_trial_add(None, t)
        return [e for e in range(1, epochs + 1) for k, t in enumerate(trials)
                if asha.on_trial_result(None, t, {"epochs_trained": e, "m": e - k / 10}) == TrialScheduler.STOP]

    assert asha_clock(1, 2, 2) == (5, 1, "")  # max_t one past the last of 2 x 2 epochs
    assert stopped_at(*asha_clock(1, 2, 2)[:2], epochs=4)[:3] == [1, 1, 1]  # a short grace period stops trials
    assert stopped_at(3, 2, epochs=2) == [2, 2, 2]  # a rung at the last epoch would stop trials that trained it
    for grace in (2, 5):
        max_t, clamped, note = asha_clock(grace, 2, 1)
        assert (max_t, clamped) == (3, 3) and stopped_at(max_t, clamped, epochs=2) == []
        assert note == (f"asha.grace_period={grace} is not shorter than a trial's 2 training epoch(s) "
                        "(train.max_epochs=2 x 1 stage(s)): ASHA stops no trial early")


def test_a_trial_the_cluster_cannot_hold_is_refused_naming_the_numbers(tmp_path):
    from margo_dist.dist.ray_session import Joined, check_resources
    from margo_dist.errors import ConfigError
    from margo_dist.tune.search import trial_needs

    two = Joined(address="127.0.0.1:6379", how="test", nodes=1, cpus=2, gpus=0, largest={"CPU": 2, "GPU": 0})
    search = load_search(str(search_file(tmp_path, space={}, trial_workers=2)))
    needs = trial_needs(search, search.train_base())
    assert needs.total == {"CPU": 2.01, "GPU": 0.0}  # two workers and the trial's own process
    with pytest.raises(ConfigError, match=r"^trial_workers=2 x dist\.cpus_per_worker=1 \(\+0\.01 for the trial\) "
                                          r"needs 2\.01 CPUs per trial; the cluster at 127\.0\.0\.1:6379 has 2\. "):
        check_resources(needs, two, per=" per trial")
    local = load_search(str(search_file(tmp_path, space={}, cpus_per_trial=3)))
    with pytest.raises(ConfigError, match=r"^cpus_per_trial=3 needs 3 CPUs per trial"):
        check_resources(trial_needs(local, local.train_base()), two, per=" per trial")
    check_resources(trial_needs(load_search(str(search_file(tmp_path, space={}))), local.train_base()), two)


def test_the_search_plot_marks_the_chosen_trial_and_draws_two_keys_as_a_heatmap(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import matplotlib.pyplot as plt

    from margo_dist.tune.search import _heat_cells, _plot

    rows = [{"trial": f"t{k}", "phase": "all", "model.alpha": a, "model.tau": t, "valid_recall@20": 0.1 * k}
            for k, (a, t) in enumerate([(0.1, 1.0), (0.1, 5.0), (1.0, 1.0), (1.0, 5.0), (1.0, 5.0)])]
    xs, ys, grid = _heat_cells(rows, ["model.alpha", "model.tau"], "valid_recall@20", "all")
    assert xs == [0.1, 1.0] and ys == [1.0, 5.0]
    np.testing.assert_allclose(grid, [[0.0, 0.2], [0.1, 0.4]])  # rows: tau; the best of a repeated cell
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    search = SimpleNamespace(space={"model.alpha": None, "model.tau": None}, metric="recall@20", dir=str(tmp_path))
    _plot(search, rows, rows[4])
    (fig,) = figures
    assert len(fig.axes) == 4  # two scatter panels, the heatmap and its colour bar
    assert all("chosen: t4" in [t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes[:2])
    assert fig.axes[2].get_xlabel() == "model.alpha" and (tmp_path / "search.png").stat().st_size > 0
    # a key searched at one value has no panel of its own; the title names it
    for r in rows:
        r["train.weight_lr"] = 0.01
    search.space["train.weight_lr"] = None
    _plot(search, rows, rows[4])
    assert len(figures[-1].axes) == 4 and figures[-1].get_suptitle() == "every trial: train.weight_lr=0.01"


def test_a_trial_epoch_is_one_line_when_the_stages_closing_checkpoint_reports_it_again(monkeypatch):
    from types import SimpleNamespace

    from margo_dist.tune import search as search_module

    said: list[str] = []
    monkeypatch.setattr(search_module, "_say", said.append)
    lines = search_module._trial_lines("stage2", "recall@20")
    a, b = (SimpleNamespace(trial_id=t, config={"model.tau": 1.0}) for t in "ab")
    for trial, stage, epoch, value in [(a, "calibrate", 3, 0.35), (b, "calibrate", 3, 0.36), (a, "calibrate", 3, 0.35),
                                       (a, "dragon", 3, 0.4)]:
        lines.on_trial_result(1, [a, b], trial, {"stage": stage, "epoch": epoch, "valid_recall@20": value})
    assert said == ["[stage2] a model.tau=1.0: calibrate epoch 3 valid recall@20 0.3500",
                    "[stage2] b model.tau=1.0: calibrate epoch 3 valid recall@20 0.3600",
                    "[stage2] a model.tau=1.0: dragon epoch 3 valid recall@20 0.4000"]


def test_a_trials_end_line_counts_that_trial_and_a_trial_logs_only_its_warnings(monkeypatch, capsys):
    from types import SimpleNamespace

    from margo_dist.tune import search as search_module

    said: list[str] = []
    monkeypatch.setattr(search_module, "_say", said.append)
    trials = [SimpleNamespace(trial_id="a", status="TERMINATED"), SimpleNamespace(trial_id="b", status="RUNNING"),
              SimpleNamespace(trial_id="c", status="RUNNING")]
    search_module._trial_lines("all", "recall@20").on_trial_complete(3, trials, trials[1])
    assert said == ["[all] b ended (2/3 trials ended)"]  # Tune sets b's status after the callback
    search_module._trial_lines("all", "recall@20", n_trials=5).on_trial_complete(3, trials, trials[1])
    assert said[-1] == "[all] b ended (2/5 trials ended)"  # two trials not created yet
    search_module._trial_log("[pretrain] epoch 1/2  loss 0.5")
    search_module._trial_log("warning: train.threads=2 is more than ...")
    assert capsys.readouterr().out == "warning: train.threads=2 is more than ...\n"
