"""Where does neighbour sampling pay?  Full-graph vs sampled epoch time across sizes.

For synthetic datasets of the Amazon shapes (Baby, Sports, Clothing, half Elec, Elec;
4096-d image and 384-d text features) this times ``--batches`` training steps of MARGO
(calibration stage, batch 2048) in each mode after one warm-up step, and reports the
epoch time as (mean step time) x (steps per epoch), plus the sampled receptive field:
the fraction of items and users whose inputs one batch touches. Writes a table and a
PNG plot (``--plot``).

    python benchmarks/bench_sampling_curve.py --sizes baby,sports,elec --plot docs/sampling_curve.png
    python benchmarks/bench_sampling_curve.py --sizes test --batches 2 --set train.batch_size=256   # seconds
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

from margo_dist.data.synth import margo_home

SIZES = {
    "test": (150, 80, 1500),  # the smoke tests' size (tests/benchmarks), with a smaller --set train.batch_size
    "tiny": (2000, 1000, 20000),
    "baby": (19445, 7050, 160792),
    "sports": (35598, 18357, 296337),
    "clothing": (39387, 23033, 278677),
    "elec-half": (96202, 31501, 844594),
    "elec": (192403, 63001, 1689188),
}


def measure(url: str, mode: str, fanouts: str, n_batches: int, overrides: list[str], queue: "mp.Queue") -> None:
    import numpy as np

    from margo_dist.config import load_config
    from margo_dist.model.margo import CALIBRATE
    from margo_dist.train.loop import Trainer, load_training_data

    cfg = load_config("configs/default.yaml", [f"data.path={url}", f"train.mode={mode}", "train.progress=false",
                                               f"sampler.fanouts={fanouts}", "run.dir=memory://curve", *overrides])
    trainer = Trainer(cfg, load_training_data(cfg), log=lambda _m: None)
    optimizer = trainer.new_optimizer()
    times, field_items, field_users = [], [], []
    batches = trainer.batches(np.random.default_rng(0))
    for k in range(n_batches + 1):
        t0 = time.time()
        b = next(batches)
        trainer.train_step(CALIBRATE, b, optimizer)
        if k > 0:
            times.append(time.time() - t0)
        if b.graph.input_items is not None:
            field_items.append(b.graph.input_items.numel() / trainer.data.ds.n_items)
            field_users.append(b.graph.input_users.numel() / trainer.data.ds.n_users)
    step = float(np.mean(times))
    queue.put({"step_s": step, "epoch_s": step * len(trainer.triplets), "steps": len(trainer.triplets),
               "batch": cfg.train.batch_size,
               "field_items": float(np.mean(field_items)) if field_items else 1.0,
               "field_users": float(np.mean(field_users)) if field_users else 1.0})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="baby,sports,clothing,elec-half,elec")
    p.add_argument("--fanouts", default="{ui: [5, 5], iu: [5, 5], ii: [5], uu: [10]}")
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--plot", default="")
    p.add_argument("--root", default=os.path.join(margo_home(), "bench"))
    p.add_argument("--set", nargs="*", default=[],
                   help="extra key=value config overrides for every measurement (e.g. train.batch_size=256)")
    args = p.parse_args(argv)
    from margo_dist.data.synth import SynthSpec, ensure_synthetic

    ctx = mp.get_context("spawn")
    rows = []
    for name in args.sizes.split(","):
        users, items, inter = SIZES[name]
        url = os.path.join(args.root, f"curve-{name}")
        if name == "elec":
            url = os.path.join(args.root, f"elec-u{users}-i{items}-n{inter}")
        ensure_synthetic(SynthSpec(n_users=users, n_items=items, n_interactions=inter,
                                   modality_dims={"image": 4096, "text": 384}, seed=0), url)
        row = {"size": name, "users": users, "items": items, "interactions": inter}
        for mode in ("full", "sampled"):
            queue: mp.Queue = ctx.Queue()
            proc = ctx.Process(target=measure, args=(url, mode, args.fanouts, args.batches, args.set, queue))
            proc.start()
            row[mode] = queue.get()
            proc.join()
        rows.append(row)
        r = row
        print(f"{name:<10} full {r['full']['epoch_s']:8.0f} s/epoch  sampled {r['sampled']['epoch_s']:8.0f} s/epoch  "
              f"ratio {r['sampled']['epoch_s'] / r['full']['epoch_s']:.2f}  receptive field items "
              f"{r['sampled']['field_items']:.0%} users {r['sampled']['field_users']:.0%}", flush=True)
    print(f"\nfan-outs {args.fanouts}; batch {rows[0]['full']['batch']}; "
          f"epoch = mean of {args.batches} steps x steps per epoch")
    print("| size | users | items | interactions | full s/epoch | sampled s/epoch | sampled/full | "
          "items reached | users reached |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['users']:,} | {r['items']:,} | {r['interactions']:,} | {r['full']['epoch_s']:.0f} | "
              f"{r['sampled']['epoch_s']:.0f} | {r['sampled']['epoch_s'] / r['full']['epoch_s']:.2f} | "
              f"{r['sampled']['field_items']:.0%} | {r['sampled']['field_users']:.0%} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = sorted(rows, key=lambda r: r["interactions"])
        fig, ax = plt.subplots(figsize=(6, 4))
        x = [r["interactions"] for r in rows]
        ax.plot(x, [r["full"]["epoch_s"] for r in rows], "o-", label="full graph")
        ax.plot(x, [r["sampled"]["epoch_s"] for r in rows], "s-", label=f"sampled {args.fanouts}")
        for r in rows:
            ax.annotate(r["size"], (r["interactions"], r["full"]["epoch_s"]), fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("interactions")
        ax.set_ylabel("seconds per epoch (2 cores)")
        ax.legend()
        ax.grid(alpha=0.3)
        os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
        fig.savefig(args.plot, dpi=110, bbox_inches="tight")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
