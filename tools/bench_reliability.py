"""Does MARGO find the planted unreliable modalities?  margo vs wo_cal vs wo_weight.

For each seed: a synthetic dataset where ``--noise`` of the items have one modality
replaced (``--noise-kind``: the view of an unrelated item, or Gaussian noise), then
  margo      two stages (the full method),
  wo_cal     stage 2 with alpha = 0, started from margo's own stage-1 state
             (``run.pretrained``), so the two differ only by L_cal,
  wo_weight  stage 1 trained to convergence: margo's stage 1 is exactly that run
             (same seed and config); ``--independent`` trains it separately instead.
Prints per seed and the mean: the ROC AUC of the learned weight as a detector of the
noisy (item, modality) pairs (lower weight = more likely noisy) and test Recall@20.

    python tools/bench_reliability.py                       # 3 seeds, 3000 users / 1500 items
    python tools/bench_reliability.py --seeds 1 --users 1000 --items 600 --interactions 12000
    python tools/bench_reliability.py --noise-kind gaussian --set model.alpha=1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time

from margo_dist.config import load_config
from margo_dist.data.synth import SynthSpec, ensure_synthetic, margo_home
from margo_dist.train.loop import train


def run_dir(args: argparse.Namespace, data: str, name: str) -> str:
    """Runs are resumed when complete, so their folder names the dataset and every setting."""
    settings = json.dumps([args.config, args.set, args.max_epochs, args.patience])
    tag = hashlib.blake2b(settings.encode(), digest_size=4).hexdigest()
    return os.path.join(args.out, f"runs-{os.path.basename(data)}-{tag}", name)


def run(args: argparse.Namespace, data: str, name: str, seed: int, *extra: str) -> dict:
    out = run_dir(args, data, name)
    cfg = load_config(args.config, [f"data.path={data}", f"run.dir={out}", f"train.seed={seed}",
                                    f"train.max_epochs={args.max_epochs}", f"train.patience={args.patience}",
                                    "train.progress=false", "run.plots=false", *args.set, *extra])
    t0 = time.time()
    summary = train(cfg, log=lambda _m: None)
    print(f"  {name:<10} seed {seed}: test recall@20 {summary['test']['recall@20']:.4f}"
          f"  auc {summary.get('weight_auc', float('nan')):.4f}  ({time.time() - t0:.0f}s)", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=1500)
    p.add_argument("--interactions", type=int, default=36000)
    p.add_argument("--dims", default="image:256,text:128")
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--noise-kind", default="swap", choices=["swap", "gaussian"])
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    p.add_argument("--independent", action="store_true", help="train wo_weight as its own run")
    p.add_argument("--out", default=os.path.join(margo_home(), "bench-reliability"))
    args = p.parse_args(argv)
    dims = {k: int(v) for k, v in (part.split(":") for part in args.dims.split(","))}
    rows = []
    for seed in range(args.seeds):
        kind = "" if args.noise_kind == "swap" else f"-{args.noise_kind}"
        data = os.path.join(args.out, f"data-s{seed}-u{args.users}-i{args.items}-n{args.interactions}{kind}")
        ensure_synthetic(SynthSpec(n_users=args.users, n_items=args.items, n_interactions=args.interactions,
                                   modality_dims=dims, seed=seed, unreliable_frac=args.noise,
                                   noise_kind=args.noise_kind), data)
        margo = run(args, data, "margo", seed, "model.variant=margo")
        wo_cal = run(args, data, "wo_cal", seed, "model.variant=wo_cal", "model.alpha=0",
                     f"run.pretrained={run_dir(args, data, 'margo')}")
        if args.independent:
            wo_weight = run(args, data, "wo_weight", seed, "model.variant=wo_weight")["test"]["recall@20"]
        else:
            wo_weight = margo["stages"]["pretrain"]["test"]["recall@20"]
        rows.append({"seed": seed, "margo_auc": margo["weight_auc"], "wo_cal_auc": wo_cal["weight_auc"],
                     "margo_r20": margo["test"]["recall@20"], "wo_cal_r20": wo_cal["test"]["recall@20"],
                     "wo_weight_r20": wo_weight})
    print(f"\n{'seed':<6} {'AUC margo':>10} {'AUC wo_cal':>11} {'R@20 margo':>11} {'R@20 wo_cal':>12} "
          f"{'R@20 wo_weight':>15}")
    mean = {k: statistics.mean(x[k] for x in rows) for k in rows[0] if k != "seed"}
    for r in rows + [{"seed": "mean", **mean}]:
        print(f"{r['seed']!s:<6} {r['margo_auc']:>10.4f} {r['wo_cal_auc']:>11.4f} {r['margo_r20']:>11.4f} "
              f"{r['wo_cal_r20']:>12.4f} {r['wo_weight_r20']:>15.4f}")
    print(json.dumps({"mean": mean}))
    ok = mean["margo_auc"] >= 0.75 and mean["margo_auc"] >= mean["wo_cal_auc"] + 0.05 and \
        mean["margo_r20"] > mean["wo_weight_r20"]
    print("acceptance (AUC >= 0.75, >= wo_cal + 0.05, R@20 above wo_weight):", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
