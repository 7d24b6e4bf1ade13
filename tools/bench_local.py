"""Local-mode speed and memory on a Baby-shaped synthetic dataset.

Prints, per training mode (full graph, sampled blocks): seconds per training epoch
(MARGO's calibration stage, the costlier one), training triplets per second, seconds
per full evaluation (validation split, every user ranked against every item) and the
peak RSS of the process; then the sampled/full ratio. Each mode runs in its own
process so the peak RSS of one does not hide the other's.

    python tools/bench_local.py                   # Baby shape: 19,445 users, 7,050 items
    python tools/bench_local.py --quick           # small smoke size
    python tools/bench_local.py --tiny            # test size (tests/tools): 150 users, 80 items
    python tools/bench_local.py --fanouts "{ui: [10, 10], iu: [10, 10], ii: [10], uu: [20]}"

Reference (architecture/issue): MMRec's DRAGON takes about 100 s per epoch and 5 s per
evaluation on this machine and shape; the arithmetic floor is about 15 s per epoch.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import time

from margo_dist.data.synth import margo_home

BABY = {"users": 19445, "items": 7050, "interactions": 160792, "image": 4096, "text": 384}
QUICK = {"users": 2000, "items": 1000, "interactions": 20000, "image": 512, "text": 384}
TINY = {"users": 150, "items": 80, "interactions": 1500, "image": 12, "text": 8}
DEFAULT_FANOUTS = "{ui: [10, 10], iu: [10, 10], ii: [10], uu: [20]}"


def dataset(shape: dict[str, int], root: str) -> str:
    """The synthetic dataset of ``shape`` under ``root`` (made once, then reused)."""
    from margo_dist.data.synth import SynthSpec, ensure_synthetic

    url = os.path.join(root, "u{users}-i{items}-n{interactions}-v{image}-t{text}".format(**shape))
    spec = SynthSpec(n_users=shape["users"], n_items=shape["items"], n_interactions=shape["interactions"],
                     modality_dims={"image": shape["image"], "text": shape["text"]}, seed=0)
    return ensure_synthetic(spec, url)


def run_mode(url: str, mode: str, fanouts: str, epochs: int, workers: int, queue: "mp.Queue") -> None:
    import numpy as np

    from margo_dist.config import load_config
    from margo_dist.data.dataset import VALID
    from margo_dist.model.margo import CALIBRATE
    from margo_dist.train.loop import Trainer, load_training_data

    cfg = load_config("configs/default.yaml", [
        f"data.path={url}", f"run.dir=memory://bench-{mode}", f"train.mode={mode}", "train.progress=false",
        f"sampler.fanouts={fanouts}", f"sampler.num_workers={workers}"])
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
    queue.put({"mode": mode, "setup_s": setup_s, "epoch_s": min(epoch_s), "triplets_per_s": n_triplets / min(epoch_s),
               "eval_s": eval_s, "peak_rss_mb": peak, "batches": len(trainer.triplets)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke size instead of the Baby shape")
    parser.add_argument("--tiny", action="store_true",
                        help="the smoke tests' size, 150 users and 80 items: runs in seconds (overrides --quick)")
    parser.add_argument("--modes", default="full,sampled")
    parser.add_argument("--fanouts", default=DEFAULT_FANOUTS)
    parser.add_argument("--epochs", type=int, default=1, help="epochs timed per mode (the fastest is reported)")
    parser.add_argument("--workers", type=int, default=1, help="sampling DataLoader processes")
    parser.add_argument("--root", default=os.path.join(margo_home(), "bench"))
    args = parser.parse_args(argv)
    shape = TINY if args.tiny else QUICK if args.quick else BABY
    url = dataset(shape, args.root)
    ctx = mp.get_context("spawn")
    rows = []
    for mode in args.modes.split(","):
        queue: mp.Queue = ctx.Queue()
        proc = ctx.Process(target=run_mode, args=(url, mode, args.fanouts, args.epochs, args.workers, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
    print(f"\ndataset {url}  (fan-outs for sampled: {args.fanouts})")
    head = f"{'mode':<8} {'batches':>7} {'epoch s':>9} {'triplets/s':>11} {'eval s':>8} {'peak RSS MB':>12} {'setup s':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['mode']:<8} {r['batches']:>7} {r['epoch_s']:>9.2f} {r['triplets_per_s']:>11.0f} "
              f"{r['eval_s']:>8.2f} {r['peak_rss_mb']:>12.0f} {r['setup_s']:>8.1f}")
    by = {r["mode"]: r for r in rows}
    if "full" in by and "sampled" in by:
        print(f"sampled/full epoch-time ratio: {by['sampled']['epoch_s'] / by['full']['epoch_s']:.2f}")


if __name__ == "__main__":
    main()
