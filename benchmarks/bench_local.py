"""Local-mode speed and memory on a Baby-shaped synthetic dataset.

Prints, per training mode (full graph, sampled blocks): seconds per training epoch
(MARGO's calibration stage, the costlier one), training triplets per second, seconds
per full evaluation (validation split, every user ranked against every item) and the
peak RSS of the process; then the sampled/full ratio. Each mode runs in its own
process so the peak RSS of one does not hide the other's.

Sampled mode runs once per entry of ``--workers``, the DataLoader processes that sample
step t+1 while step t computes (``sampler.num_workers``; 0 samples in the training
process, on the critical path), so the table shows what the overlap hides. ``--repeat
R`` measures every row in turn R times (this host's speed drifts between minutes) and
prints each round's sampled/full ratios and their medians.

    python benchmarks/bench_local.py                   # Baby shape: 19,445 users, 7,050 items
    python benchmarks/bench_local.py --quick           # small smoke size
    python benchmarks/bench_local.py --tiny            # test size (tests/benchmarks): 150 users, 80 items
    python benchmarks/bench_local.py --workers 0,1 --threads 1 --repeat 3   # is sampling off the critical path?
    python benchmarks/bench_local.py --fanouts "{ui: [10, 10], iu: [10, 10], ii: [10], uu: [20]}"
    python benchmarks/bench_local.py --alternate 40 --threads 1   # one step of each mode in turn
    python benchmarks/bench_local.py --modes full --precision float32,bfloat16 --threads 2 --repeat 3

``--precision`` runs each row per precision: ``bfloat16`` sets ``train.precision`` (the
projection MLPs under bf16 autocast) and ``data.feature_dtype`` (the raw features held
in bf16); the table then gives each bfloat16 row's epoch-time ratio to float32's.

Reference (architecture/issue): MMRec's DRAGON takes about 100 s per epoch and 5 s per
evaluation on this machine and shape; the arithmetic floor is about 15 s per epoch.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import time

from margo_dist.config import Config, load_config
from margo_dist.data.synth import margo_home

BABY = {"users": 19445, "items": 7050, "interactions": 160792, "image": 4096, "text": 384}
QUICK = {"users": 2000, "items": 1000, "interactions": 20000, "image": 512, "text": 384}
TINY = {"users": 150, "items": 80, "interactions": 1500, "image": 12, "text": 8}


def dataset(shape: dict[str, int], root: str) -> str:
    """The synthetic dataset of ``shape`` under ``root`` (made once, then reused)."""
    from margo_dist.data.synth import SynthSpec, ensure_synthetic

    url = os.path.join(root, "u{users}-i{items}-n{interactions}-v{image}-t{text}".format(**shape))
    spec = SynthSpec(n_users=shape["users"], n_items=shape["items"], n_interactions=shape["interactions"],
                     modality_dims={"image": shape["image"], "text": shape["text"]}, seed=0)
    return ensure_synthetic(spec, url)


def bench_config(url: str, mode: str, fanouts: str, workers: int, threads: int, precision: str = "float32"
                 ) -> Config:
    """The training config of one mode's run: the default config on the bench dataset."""
    return load_config("configs/default.yaml", [
        f"data.path={url}", f"run.dir=memory://bench-{mode}", f"train.mode={mode}", "train.progress=false",
        f"sampler.num_workers={workers}", f"train.threads={threads}", f"train.precision={precision}",
        f"data.feature_dtype={precision}", *([f"sampler.fanouts={fanouts}"] if fanouts else [])])


def run_mode(url: str, mode: str, fanouts: str, epochs: int, workers: int, threads: int, queue: "mp.Queue",
             precision: str = "float32") -> None:
    import numpy as np

    from margo_dist.data.dataset import VALID
    from margo_dist.model.margo import CALIBRATE
    from margo_dist.train.loop import Trainer, load_training_data

    cfg = bench_config(url, mode, fanouts, workers, threads, precision)
    t0 = time.time()
    trainer = Trainer(cfg, load_training_data(cfg), log=lambda _m: None)
    setup_s = time.time() - t0
    optimizer = trainer.new_optimizer()
    rng = np.random.default_rng(0)
    n_triplets = int((trainer.data.ds.label == 0).sum())
    epoch_s = []
    for e in range(epochs):
        t1 = time.time()
        trainer.train_epoch(CALIBRATE, optimizer, rng, f"{mode} {e}")
        epoch_s.append(time.time() - t1)
    t2 = time.time()
    trainer.evaluate(CALIBRATE, VALID)
    eval_s = time.time() - t2
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"mode": mode, "workers": workers, "precision": precision, "setup_s": setup_s, "epoch_s": min(epoch_s),
               "triplets_per_s": n_triplets / min(epoch_s), "eval_s": eval_s, "peak_rss_mb": peak,
               "batches": len(trainer.triplets)})


def alternate(url: str, fanouts: str, steps: int, workers: int, threads: int, queue: "mp.Queue") -> None:
    """A full-graph and a sampled trainer in one process, their steps taken in turn.

    Each timed step includes making its batch (in sampled mode: receiving it from the
    sampler processes, which sample ahead meanwhile). Taking the two modes' steps in turn
    exposes both to the same moments of a host whose speed drifts by a quarter between
    minutes, which one epoch after the other does not.
    """
    import numpy as np

    from margo_dist.model.margo import CALIBRATE
    from margo_dist.train.loop import Trainer, load_training_data

    runs = {}
    for mode in ("full", "sampled"):
        cfg = bench_config(url, mode, fanouts, workers, threads)
        trainer = Trainer(cfg, load_training_data(cfg), log=lambda _m: None)
        rng = np.random.default_rng(0)
        batches = (b for _ in range(steps + 2) for b in trainer.batches(rng))  # epochs after one another
        runs[mode] = (trainer, trainer.new_optimizer(), batches)
    times: dict[str, list[float]] = {mode: [] for mode in runs}
    for k in range(steps + 2):
        for mode, (trainer, optimizer, batches) in runs.items():
            t0 = time.perf_counter()
            trainer.train_step(CALIBRATE, next(batches), optimizer)
            if k >= 2:  # two warm-up steps each (the optimiser's state, the sampler processes)
                times[mode].append(time.perf_counter() - t0)
    queue.put(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke size instead of the Baby shape")
    parser.add_argument("--tiny", action="store_true",
                        help="the smoke tests' size, 150 users and 80 items: runs in seconds (overrides --quick)")
    parser.add_argument("--modes", default="full,sampled")
    parser.add_argument("--fanouts", default="", help="sampled mode's fan-outs (default: configs/default.yaml's)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs timed per mode (the fastest is reported)")
    parser.add_argument("--workers", default="1", help="comma-separated sampling DataLoader process counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the training process (0: default)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every row in turn (median ratios)")
    parser.add_argument("--alternate", type=int, default=0, metavar="STEPS",
                        help="instead of epochs: STEPS steps of each mode taken in turn in one process "
                             "(sampler processes: the first of --workers)")
    parser.add_argument("--precision", default="float32",
                        help="comma-separated: float32, bfloat16 (projection and stored features in bf16)")
    parser.add_argument("--root", default=os.path.join(margo_home(), "bench"))
    args = parser.parse_args(argv)
    shape = TINY if args.tiny else QUICK if args.quick else BABY
    url = dataset(shape, args.root)
    ctx = mp.get_context("spawn")
    if args.alternate > 0:
        print_alternate(url, args, ctx)
        return
    modes = [(m, 0) for m in args.modes.split(",") if m != "sampled"]
    if "sampled" in args.modes.split(","):
        modes += [("sampled", int(w)) for w in args.workers.split(",")]
    runs = [(mode, workers, precision) for mode, workers in modes for precision in args.precision.split(",")]
    rounds = []
    for _ in range(args.repeat):
        rows = []
        for mode, workers, precision in runs:
            queue: mp.Queue = ctx.Queue()
            proc = ctx.Process(target=run_mode, args=(url, mode, args.fanouts, args.epochs, workers, args.threads,
                                                      queue, precision))
            proc.start()
            rows.append(queue.get())
            proc.join()
        rounds.append(rows)
    fanouts = args.fanouts or "configs/default.yaml's"
    ratios: dict[int, list[float]] = {}
    precision_ratios: dict[tuple[str, int], list[float]] = {}
    for k, rows in enumerate(rounds):
        print(f"\ndataset {url}  (fan-outs for sampled: {fanouts}; round {k + 1}/{args.repeat})")
        head = (f"{'mode':<8} {'samplers':>8} {'precision':>9} {'batches':>7} {'epoch s':>9} {'triplets/s':>11} "
                f"{'eval s':>8} {'peak RSS MB':>12} {'setup s':>8}")
        print(head)
        print("-" * len(head))
        for r in rows:
            samplers = str(r["workers"]) if r["mode"] == "sampled" else "-"
            print(f"{r['mode']:<8} {samplers:>8} {r['precision']:>9} {r['batches']:>7} {r['epoch_s']:>9.2f} "
                  f"{r['triplets_per_s']:>11.0f} {r['eval_s']:>8.2f} {r['peak_rss_mb']:>12.0f} {r['setup_s']:>8.1f}")
        base = {(r["mode"], r["workers"]): r for r in rows if r["precision"] == "float32"}
        for r in rows:
            ref = base.get((r["mode"], r["workers"]))
            if r["precision"] != "float32" and ref is not None:
                ratio = r["epoch_s"] / ref["epoch_s"]
                precision_ratios.setdefault((r["mode"], r["workers"]), []).append(ratio)
                print(f"{r['mode']} {r['precision']}/float32 epoch-time ratio: {ratio:.2f} (peak RSS "
                      f"{r['peak_rss_mb']:.0f} against {ref['peak_rss_mb']:.0f} MB)")
        full = [r for r in rows if r["mode"] == "full" and r["precision"] == "float32"]
        for r in rows:
            if r["mode"] == "sampled" and r["precision"] == "float32" and full:
                ratio = r["epoch_s"] / full[0]["epoch_s"]
                ratios.setdefault(r["workers"], []).append(ratio)
                print(f"sampled ({r['workers']} sampler processes)/full epoch-time ratio: {ratio:.2f}")
    if args.repeat > 1:
        for (mode, workers), values in precision_ratios.items():
            print(f"{mode} ({workers} sampler processes) bfloat16/float32 epoch-time ratio per round: "
                  f"{' '.join(f'{v:.2f}' for v in values)}; median {statistics.median(values):.2f}")
        for workers, values in ratios.items():
            print(f"sampled ({workers} sampler processes)/full epoch-time ratio per round: "
                  f"{' '.join(f'{v:.2f}' for v in values)}; median {statistics.median(values):.2f}")


def print_alternate(url: str, args: argparse.Namespace, ctx: "mp.context.BaseContext") -> None:
    """Run ``alternate`` in its own process and print its table and ratios."""
    workers = int(args.workers.split(",")[0])
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=alternate, args=(url, args.fanouts, args.alternate, workers, args.threads, queue))
    proc.start()
    times = queue.get()
    proc.join()
    fanouts = args.fanouts or "configs/default.yaml's"
    print(f"\ndataset {url}  (fan-outs for sampled: {fanouts}; {args.alternate} steps of each mode in turn, "
          f"{workers} sampler processes)")
    head = f"{'mode':<8} {'steps':>5} {'mean step s':>12} {'median step s':>14} {'min step s':>11}"
    print(head)
    print("-" * len(head))
    for mode, values in times.items():
        print(f"{mode:<8} {len(values):>5} {statistics.mean(values):>12.3f} {statistics.median(values):>14.3f} "
              f"{min(values):>11.3f}")
    pairs = [s / f for f, s in zip(times["full"], times["sampled"])]
    of_means = statistics.mean(times["sampled"]) / statistics.mean(times["full"])
    print(f"sampled/full step-time ratio: of the means {of_means:.3f}, "
          f"median of the {len(pairs)} pairs {statistics.median(pairs):.3f}")


if __name__ == "__main__":
    main()
