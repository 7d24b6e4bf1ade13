"""The staged search on Ray Tune: trials, ASHA, selection on validation, resumable.

A search runs one or two Tune experiments ("phases") in its folder:

- staged (the variant has both stages and the space has stage-2 keys): ``stage1``
  trains stage 1 only (``run.stop_after=pretrain``) once per stage-1 setting; the
  best of those by validation is the ``run.pretrained`` of every ``stage2`` trial,
  which searches the stage-2 keys (α, τ, θ's learning rate).
- otherwise one phase, ``all``, in which every trial trains every stage.

Trials read the validation split only (``train.test_split=false``); ASHA stops the
weak ones on the validation metric, with the trial's training epochs as its clock.
After the search the best trial of the last phase is written as a train config
(``best.yaml``), its test metrics are computed once, and the results table
(``trials.csv``), ``search.json`` and ``search.png`` are written. Killing the driver
and running the same command again restores each phase (``Tuner.restore``): finished
trials are kept, and an unfinished trial resumes from its own run folder.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import time
from typing import Any, Callable

import numpy as np

from margo_dist.config import Config, dump_yaml, from_dict, load_config, to_dict
from margo_dist.data import io as mio
from margo_dist.dist.launch import epoch_metrics
from margo_dist.dist.ray_session import Needs, check_resources, ray_session, run_needs, scoped_environ
from margo_dist.errors import MargoError
from margo_dist.variants import CALIBRATE, DRAGON, PRETRAIN, get_variant
from margo_dist.train.loop import epochs_trained
from margo_dist.train.rundir import SUMMARY as RUN_SUMMARY
from margo_dist.train.rundir import RunDir
from margo_dist.tune.space import Dimension, SearchConfig, ray_space
from margo_dist.tune.state import mend_state, state_keeper

STARTS = "trial_starts.txt"  # one line each time a trial's process starts its run (a resume adds one)
RESULTS = "trials.csv"
SUMMARY = "search.json"
PLOT = "search.png"
BEST = "best.yaml"


# -- one trial -------------------------------------------------------------------------

def trial_config(config: dict[str, Any]) -> Config:
    """Tune's config dict -> the trial's typed training config (the first line of a trial)."""
    from ray import tune

    values = copy.deepcopy(config["_train"])
    for key, value in config.items():
        if not key.startswith("_"):
            _set_dotted(values, key, value)
    cfg = from_dict(values, f"Tune trial config ({config['_phase']})")
    cfg.run.dir = os.path.join(config["_root"], "runs", f"{config['_phase']}-{tune.get_context().get_trial_id()}")
    cfg.validate()
    return cfg


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """Set ``model.alpha``-style ``key`` in the nested config dict ``values``."""
    *parents, leaf = key.split(".")
    for part in parents:
        values = values[part]
    values[leaf] = value


def _trial_log(message: str) -> None:
    """A trial's own log: its warnings and errors. Its epochs are the driver's one line per trial
    epoch (``_trial_lines``) and its run folder's metrics.jsonl, not a second copy here."""
    if message.startswith(("warning", "error")):
        print(message, flush=True)


def run_trial(config: dict[str, Any]) -> None:
    """A Tune function trainable: one training run, validation reported after every epoch."""
    cfg = trial_config(config)
    from ray import tune

    from margo_dist.train.loop import Trainer, load_training_data

    run = RunDir(cfg.run.dir)
    before = run.read_text(STARTS) if run.exists(STARTS) else ""
    run.write_text(STARTS, f"{before}{time.time():.3f} pid {os.getpid()}\n")
    if cfg.dist.workers > 0:
        from ray.tune.integration.ray_train import TuneReportCallback

        from margo_dist.train.workers import train_on_ray

        train_on_ray(cfg, log=_trial_log, callbacks=[TuneReportCallback()])
        return
    reported: list[int] = []

    def report(seq: int, record: dict[str, Any]) -> None:
        if record:
            tune.report(epoch_metrics(record))
            reported.append(seq)

    trainer = Trainer(cfg, load_training_data(cfg), log=_trial_log, on_checkpoint=report)
    summary = trainer.fit()
    if not reported:
        # a run that had finished before Tune saved the trial as finished: fit returned its
        # summary without training; report its result once, from the run folder's records
        records = [r for r in run.read_metrics() if "taken_from" not in r]
        last = [r for r in records if r["stage"] == trainer.stages[-1]][-1]
        tune.report(epoch_metrics(dict(last, valid=summary["valid"], epochs_trained=epochs_trained(records))))


# -- one phase -------------------------------------------------------------------------

def _phase_overrides(cfg: Config, phase: str, pretrained: str) -> Config:
    cfg = copy.deepcopy(cfg)
    cfg.train.test_split = False
    cfg.train.progress = False
    cfg.run.plots = False
    cfg.run.checkpoint_every = 1  # a report per epoch: ASHA's clock
    cfg.run.stop_after = PRETRAIN if phase == "stage1" else ""
    cfg.run.pretrained = pretrained if phase == "stage2" else ""
    return cfg


TRIAL_CPU = 0.01  # what a trial of Ray Train workers reserves itself (Tune refuses a trial with none)


def trial_cpus(search: SearchConfig) -> float:
    """CPUs a trial's own process reserves: a local trial its ``cpus_per_trial``; a trial of N
    workers only waits on its TorchTrainer, whose workers reserve the CPUs."""
    return search.cpus_per_trial if search.trial_workers == 0 else TRIAL_CPU


def trial_needs(search: SearchConfig, base: Config) -> Needs:
    """What one trial reserves on the cluster: its own process and its Ray Train workers."""
    if search.trial_workers == 0:
        return Needs(what=f"cpus_per_trial={search.cpus_per_trial}", bundles=1, cpus=search.cpus_per_trial)
    cfg = copy.deepcopy(base.dist)
    cfg.workers = search.trial_workers
    needs = run_needs(cfg)
    needs.what = needs.what.replace("dist.workers=", "trial_workers=", 1) + f" (+{TRIAL_CPU:g} for the trial)"
    needs.extra_cpus = TRIAL_CPU
    return needs


def asha_clock(grace_period: int, max_epochs: int, n_stages: int) -> tuple[int, int, str]:
    """ASHA's ``(max_t, grace_period)`` for trials of ``n_stages`` stages of ``max_epochs`` each,
    and a note when the grace period had to be cut ('' otherwise).

    max_t is one past the last epoch: ASHA stops a trial at max_t, which would cut it off
    before it restores its best state and writes its summary. A grace period as long as a
    trial or longer puts ASHA's only rung at the trial's last epoch (or past max_t, which ASHA
    refuses): it would stop trials that have trained every epoch, before their summary. It is
    set to max_t instead, where no trial arrives: no trial is stopped early, which is what a
    grace period that long asks for.
    """
    epochs = max_epochs * n_stages
    if grace_period < epochs:
        return epochs + 1, grace_period, ""
    return epochs + 1, epochs + 1, (f"asha.grace_period={grace_period} is not shorter than a trial's {epochs} "
                                    f"training epoch(s) (train.max_epochs={max_epochs} x {n_stages} stage(s)): "
                                    "ASHA stops no trial early")


def run_phase(search: SearchConfig, base: Config, phase: str, space: dict[str, Dimension], pretrained: str = "",
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One Tune experiment in ``<dir>/<phase>`` (restored when it exists); one row per trial."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    root = os.path.abspath(search.dir)
    cfg = _phase_overrides(base, phase, pretrained)
    if cfg.train.threads == 0 and search.trial_workers == 0:
        cfg.train.threads = search.cpus_per_trial  # torch would take every core in each trial
    cfg.dist.workers = search.trial_workers
    stages = [PRETRAIN] if phase == "stage1" else (get_variant(cfg.model.variant).stages[1:] if phase == "stage2"
                                                   else get_variant(cfg.model.variant).stages)
    metric = f"valid_{search.metric}"
    trainable = tune.with_resources(run_trial, {"cpu": trial_cpus(search)})
    path = os.path.join(root, phase)
    # Tune saves its experiment state after every step, not every few seconds: a driver
    # killed just after a trial ended must not find that trial unfinished on restore
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    mend_state(path, log)
    if tune.Tuner.can_restore(path):
        log(f"search phase {phase}: restoring {path} (finished trials are kept)")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler: Any = FIFOScheduler()
        if search.asha.enabled:
            max_t, grace, note = asha_clock(search.asha.grace_period, cfg.train.max_epochs, len(stages))
            if note:
                log(f"search phase {phase}: {note}")
            scheduler = ASHAScheduler(time_attr="epochs_trained", max_t=max_t, grace_period=grace,
                                      reduction_factor=search.asha.reduction_factor)
        param_space = {"_train": to_dict(cfg), "_root": root, "_phase": phase, **ray_space(space)}
        samples = search.num_samples if any(d.kind != "grid" for d in space.values()) else 1
        n_trials = samples * int(np.prod([len(d.grid) for d in space.values() if d.kind == "grid"]))
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(metric=metric, mode="max", scheduler=scheduler, num_samples=samples,
                                        search_alg=_seeded_search(search.seed, search.max_concurrent_trials)),
            run_config=tune.RunConfig(name=phase, storage_path=root, verbose=0,
                                      callbacks=[CSVLoggerCallback(), JsonLoggerCallback(),
                                                 _trial_lines(phase, search.metric, n_trials), state_keeper(path)]))
        log(f"search phase {phase}: {len(space)} searched key(s) in {path}")
    # Tune's result files (progress.csv, result.json) are kept, its TensorBoard logger is not:
    # the logger makes Tune print a TensorBoard command for a staging folder under /tmp
    with scoped_environ({"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}):
        grid = tuner.fit()
    rows = []
    for result in grid:
        keys = {k: v for k, v in result.config.items() if not k.startswith("_")}
        run_dir = os.path.join(root, "runs", f"{phase}-{result.metrics.get('trial_id', '')}") \
            if result.metrics else ""
        rows.append(_row(phase, keys, run_dir, stages[-1], result.error, search.metric))
    return rows


def _say(message: str) -> None:
    """The trial lines' output (a module function: Tune pickles its callbacks with the experiment)."""
    print(message, flush=True)


def _trial_lines(phase: str, metric: str, n_trials: int = 0) -> Any:
    """A Tune callback that logs one line per trial epoch and per trial end (Tune's own tables are off).

    A trial reports at each checkpoint; the one that closes a stage repeats the stage's last
    epoch, which is not shown twice. ``n_trials``: the phase's trials (Tune creates them as
    slots free up, so its own list is shorter until the last one starts)."""
    from ray import tune

    class TrialLines(tune.Callback):
        def __init__(self) -> None:
            self.shown: dict[str, tuple[str, int]] = {}  # trial id -> (stage, epoch) of its last line

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            epoch = (result["stage"], result["epoch"])
            if self.shown.get(trial.trial_id) == epoch:
                return
            self.shown[trial.trial_id] = epoch
            keys = " ".join(f"{k}={v}" for k, v in trial.config.items() if not k.startswith("_"))
            _say(f"[{phase}] {trial.trial_id} {keys}: {result['stage']} epoch {result['epoch']} "
                f"valid {metric} {result.get(f'valid_{metric}', float('nan')):.4f}")

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            # Tune marks the trial TERMINATED after this call: count it as ended here
            done = sum(t.status == "TERMINATED" or t is trial for t in trials)
            _say(f"[{phase}] {trial.trial_id} ended ({done}/{max(n_trials, len(trials))} trials ended)")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            _say(f"[{phase}] {trial.trial_id} FAILED: {trial.error_file}")

    return TrialLines()


def _seeded_search(seed: int, max_concurrent: int) -> Any:
    """Tune's default variant generator with a fixed seed (the same draws on every run); it
    holds the concurrency limit itself (Tune ignores ``max_concurrent_trials`` beside it)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)


def _row(phase: str, keys: dict[str, Any], run_dir: str, stage: str, error: Any, metric: str) -> dict[str, Any]:
    """A trial's line of the results table, from its run folder's records (not Tune's last report)."""
    row: dict[str, Any] = {"phase": phase, "trial": os.path.basename(run_dir), **keys, "status": "error", "stage": "",
                           "epochs": 0, "seconds": 0.0, "run": run_dir}
    if error is not None or not run_dir or not os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        row["error"] = str(error) if error is not None else "no record"
        return row
    run = RunDir(run_dir)
    records = [r for r in run.read_metrics() if "taken_from" not in r]
    if not records:
        row["error"] = "no record"
        return row
    # a trial that ASHA stopped in an earlier stage is shown with that stage's best epoch
    reached = stage if any(r["stage"] == stage for r in records) else records[-1]["stage"]
    best = max((r for r in records if r["stage"] == reached), key=lambda r: r["valid"][metric])
    row["stage"] = reached
    row.update({f"valid_{k}": v for k, v in best["valid"].items()})
    if "weight_auc" in best:  # planted data: how well the weights at that epoch find the noisy pairs
        row["weight_auc"] = best["weight_auc"]
    row.update({"status": "finished" if run.exists(RUN_SUMMARY) else "stopped early",
                "best_epoch": best["epoch"], "epochs": epochs_trained(records),
                "seconds": sum(r["train_seconds"] + r["eval_seconds"] for r in records),
                "starts": len(run.read_text(STARTS).splitlines()) if run.exists(STARTS) else 0})
    return row


_STAGE_ORDER = [PRETRAIN, CALIBRATE, DRAGON]


# -- the whole search ------------------------------------------------------------------

def run_search(search: SearchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the search; write best.yaml, trials.csv, search.json and search.png.

    Ray is joined by the train config's ``dist.address`` (``dist.ray_session``); a trial
    that the cluster cannot hold is refused before the search starts.
    """
    from margo_dist.data.synth import dataset_url
    from margo_dist.train.loop import load_training_data

    base = search.train_base()
    base.data.path = mio.absolute(dataset_url(base.data.path, base.train.progress))
    load_training_data(base)  # validates the data and builds the graph artefacts once, before the trials
    mio.makedirs(search.dir)
    variant = get_variant(base.model.variant)
    one, two = search.stage_keys()
    staged = search.staged and bool(two) and variant.stages[:2] == (PRETRAIN, CALIBRATE)
    t0 = time.time()
    with ray_session(base.dist.address, log) as joined:
        check_resources(trial_needs(search, base), joined, per=" per trial")
        if staged:
            rows1 = run_phase(search, base, "stage1", one, log=log)
            best1 = _best(rows1, "stage1", search.metric, log)
            log(f"stage 1: best of {len(rows1)} pretraining(s) is {best1['trial']} "
                f"(valid {search.metric} {best1[f'valid_{search.metric}']:.4f}); stage-2 trials start from it")
            rows2 = run_phase(search, base, "stage2", two, pretrained=best1["run"], log=log)
            rows, final = rows1 + rows2, rows2
        else:
            rows = final = run_phase(search, base, "all", search.space, log=log)
    best = _best(final, final[0]["phase"] if final else "all", search.metric, log)
    return _write_results(search, base, rows, best, staged, time.time() - t0, log)


def _best(rows: list[dict[str, Any]], phase: str, metric: str,
          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The phase's best trial by validation ``metric``, among those that reached its last stage
    (the first in trial order on a tie, which ``log`` is warned of)."""
    last = max((r["stage"] for r in rows if r["status"] != "error"), key=_STAGE_ORDER.index, default="")
    ok = [r for r in rows if r["status"] != "error" and r["stage"] == last]
    if not ok:
        errors = "; ".join(f"{r['trial']}: {r.get('error')}" for r in rows)
        raise MargoError(f"search phase {phase}: no trial finished ({errors})")
    best = max(ok, key=lambda r: r[f"valid_{metric}"])
    tied = [r["trial"] for r in ok if r[f"valid_{metric}"] == best[f"valid_{metric}"]]
    if log is not None and len(tied) > 1:
        log(f"warning: search phase {phase}: {len(tied)} of {len(ok)} trials tie at valid {metric} "
            f"{best[f'valid_{metric}']:.4f} ({', '.join(tied[:5])}{', ...' if len(tied) > 5 else ''}); "
            f"{best['trial']} is taken. The searched keys may not change this metric on this data "
            "(stage 2 may never beat its starting state: docs/search.md)")
    return best


def best_config(base: Config, search: SearchConfig, best: dict[str, Any], stage1: dict[str, Any] | None) -> Config:
    """The chosen trial as a standalone train config (both stages from scratch, test split read)."""
    cfg = copy.deepcopy(base)
    values = to_dict(cfg)
    chosen = {k: best[k] for k in search.space if k in best}
    if stage1 is not None:
        chosen.update({k: stage1[k] for k in search.space if k in stage1})
    for key, value in chosen.items():
        _set_dotted(values, key, value)
    cfg = from_dict(values, "the search's best trial")
    cfg.run.dir = os.path.join(os.path.abspath(search.dir), "best")
    cfg.run.pretrained = ""
    cfg.run.stop_after = ""
    cfg.train.test_split = True
    return cfg


def _write_results(search: SearchConfig, base: Config, rows: list[dict[str, Any]], best: dict[str, Any],
                   staged: bool, seconds: float, log: Callable[[str], None]) -> dict[str, Any]:
    from margo_dist.train.report import evaluate_run

    stage1 = _best([r for r in rows if r["phase"] == "stage1"], "stage1", search.metric) if staged else None
    cfg = best_config(base, search, best, stage1)
    with mio.atomic_write(mio.join(search.dir, BEST), "wt") as fh:
        fh.write(dump_yaml(cfg))
    load_config(mio.join(search.dir, BEST))  # what we wrote is a valid train config
    log(f"best trial {best['trial']}: valid {search.metric} {best[f'valid_{search.metric}']:.4f}; "
        f"scoring its test split once")
    scored = evaluate_run(best["run"], ["train.test_split=true"])  # the test split's one read
    n2 = sum(1 for r in rows if r["phase"] == "stage2")
    stage1_seconds = sum(r["seconds"] for r in rows if r["phase"] == "stage1")
    summary: dict[str, Any] = {
        "metric": search.metric, "staged": staged, "seconds": seconds, "trials": len(rows),
        "best": {"trial": best["trial"], "keys": {k: best[k] for k in search.space if k in best},
                 "valid": {k[len("valid_"):]: v for k, v in best.items() if k.startswith("valid_")},
                 "valid_recomputed": scored["valid"], "test": scored["test"], "run": best["run"]},
        "trial_seconds": sum(r["seconds"] for r in rows),
    }
    if staged and stage1 is not None:
        summary["best"]["keys"].update({k: stage1[k] for k in search.space if k in stage1})
        # without the split, every stage-2 trial would pretrain again (at the chosen stage-1 trial's cost)
        summary["saved_seconds"] = n2 * stage1["seconds"] - stage1_seconds
    _write_table(search.dir, rows)
    with mio.atomic_write(mio.join(search.dir, SUMMARY), "wt") as fh:
        json.dump(summary, fh, indent=2, default=str)
    _plot(search, rows, best)
    log(report(search.dir))
    log(f"next: margo-dist train --config {mio.join(search.dir, BEST)}   # the chosen config, both stages "
        "from scratch")
    return summary


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def _write_table(folder: str, rows: list[dict[str, Any]]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=_columns(rows))
    writer.writeheader()
    writer.writerows(rows)
    with mio.atomic_write(mio.join(folder, RESULTS), "wt") as fh:
        fh.write(text.getvalue())


def read_table(folder: str) -> list[dict[str, str]]:
    with mio.open_url(mio.join(folder, RESULTS), "rt") as fh:
        return list(csv.DictReader(fh))


def _plot(search: SearchConfig, rows: list[dict[str, Any]], best: dict[str, Any]) -> None:
    """Validation metric against each searched key (a marker per trial, the chosen one a star);
    with two searched keys, a heatmap of the final phase's metric over their grid too. A key
    that every trial had at one value (``space.KEY=[v]``) gets no panel: it is named in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    searched = list(search.space) or ["trial"]
    values = {k: {repr(r[k]) for r in rows if k in r} for k in searched}
    keys = [k for k in searched if len(values[k]) > 1] or searched
    fixed = [f"{k}={next(iter(values[k]))}" for k in searched if k not in keys and values[k]]
    metric = f"valid_{search.metric}"
    heat = len(keys) == 2 and _heat_cells(rows, keys, metric, best["phase"])
    n_panels = len(keys) + (1 if heat else 0)
    fig, axes = plt.subplots(1, n_panels, figsize=(4.4 * n_panels, 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        numeric = all(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
                      for r in rows if key in r)
        for phase, marker in (("stage1", "s"), ("stage2", "o"), ("all", "o")):
            pts = [(r[key], r[metric]) for r in rows if r["phase"] == phase and key in r and metric in r]
            if pts:
                ax.scatter([p[0] if numeric else str(p[0]) for p in pts], [p[1] for p in pts], marker=marker,
                           alpha=0.7, label=phase)
        if key in best and metric in best:
            ax.scatter([best[key] if numeric else str(best[key])], [best[metric]], marker="*", s=220,
                       color="gold", edgecolor="black", zorder=3, label=f"chosen: {best['trial']}")
        xs = [r[key] for r in rows if key in r]
        if numeric and xs and min(xs) > 0 and max(xs) / min(xs) >= 20:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"validation {search.metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if heat:
        xs, ys, grid = heat
        ax = axes[0][-1]
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(xs)), [f"{x:g}" if isinstance(x, float) else str(x) for x in xs])
        ax.set_yticks(range(len(ys)), [f"{y:g}" if isinstance(y, float) else str(y) for y in ys])
        ax.set_xlabel(keys[0])
        ax.set_ylabel(keys[1])
        ax.set_title(f"{best['phase']}: validation {search.metric} (best of each cell)", fontsize=9)
        if best.get(keys[0]) in xs and best.get(keys[1]) in ys:
            ax.scatter([xs.index(best[keys[0]])], [ys.index(best[keys[1]])], marker="*", s=220, color="gold",
                       edgecolor="black")
        fig.colorbar(image, ax=ax)
    if fixed:
        fig.suptitle(f"every trial: {', '.join(fixed)}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    with mio.atomic_write(mio.join(search.dir, PLOT), "wb") as fh:
        fh.write(buf.getvalue())


def _heat_cells(rows: list[dict[str, Any]], keys: list[str], metric: str,
                phase: str) -> tuple[list[Any], list[Any], np.ndarray] | None:
    """The grid of the two keys' values in ``phase`` and each cell's best metric (NaN: no trial)."""
    pts = [(r[keys[0]], r[keys[1]], r[metric]) for r in rows
           if r["phase"] == phase and keys[0] in r and keys[1] in r and metric in r and r.get(metric) is not None]
    if not pts:
        return None
    xs, ys = sorted({p[0] for p in pts}), sorted({p[1] for p in pts})
    if len(xs) < 2 or len(ys) < 2:
        return None
    grid = np.full((len(ys), len(xs)), np.nan)
    for x, y, v in pts:
        cell = grid[ys.index(y), xs.index(x)]
        grid[ys.index(y), xs.index(x)] = v if np.isnan(cell) else max(cell, v)
    return xs, ys, grid


def report(folder: str) -> str:
    """The search's table sorted by the validation metric, and the chosen trial's test metrics."""
    summary = json.loads(mio.open_url(mio.join(folder, SUMMARY), "rt").read())
    metric = f"valid_{summary['metric']}"
    rows = read_table(folder)
    keys = list(summary["best"]["keys"])
    ranked = sorted(rows, key=lambda r: float(r[metric]) if r.get(metric) else float("-inf"), reverse=True)
    head = ["phase", "trial", *keys, metric, "stage", "epochs", "seconds", "status"]
    table = [head] + [[r.get(c, "") if c not in (metric, "seconds") or not r.get(c) else
                       f"{float(r[c]):.4f}" if c == metric else f"{float(r[c]):.1f}" for c in head] for r in ranked]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(head))]
    lines = ["  ".join(f"{str(v):<{w}}" for v, w in zip(line, widths)) for line in table]
    best = summary["best"]
    lines.append(f"\nchosen: {best['trial']} {best['keys']}")
    lines.append(f"  validation {summary['metric']} {best['valid'][summary['metric']]:.4f}, "
                 f"test {summary['metric']} {best['test'][summary['metric']]:.4f} (test split read once, after the search)")
    if "saved_seconds" in summary:
        lines.append(f"  staged search: stage 1 trained once per stage-1 setting; {summary['saved_seconds']:.1f} s "
                     f"({summary['saved_seconds'] / 3600:.3f} trial-hours) saved against pretraining in every trial")
    lines.append(f"  best train config: {mio.join(folder, BEST)}")
    return "\n".join(lines)


def is_search(folder: str) -> bool:
    """Whether ``folder`` holds a search's results (``margo-dist report`` on it prints the table)."""
    return mio.exists(mio.join(folder, SUMMARY))
