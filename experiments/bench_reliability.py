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

    python experiments/bench_reliability.py                       # 3 seeds, 3000 users / 1500 items
    python experiments/bench_reliability.py --seeds 1 --users 1000 --items 600 --interactions 12000
    python experiments/bench_reliability.py --noise-kind gaussian --set model.alpha=1
    python experiments/bench_reliability.py --missing-frac 0.2 --set data.missing=mask   # or mean, zero
    python experiments/bench_reliability.py --workers 2    # and MARGO on 2 Ray workers per seed
    python experiments/bench_reliability.py --workers 2 --dist-set train.mode=sampled --recall-within 0.03

With ``--workers N`` each seed's MARGO run is repeated with ``dist.workers=N`` (one
thread per worker), and the check is that the N-worker runs' mean test Recall@20 and
mean weight AUC lie within the local runs' seed range (min to max) widened by 0.005.
``--dist-set`` adds overrides to the N-worker runs only (sampled mode, say); with
``--recall-within F`` the check is instead that their mean test Recall@20 is at least
(1 - F) times the local (full-graph) runs' mean.
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
from margo_dist.train.entry import train


def run_dir(args: argparse.Namespace, data: str, name: str) -> str:
    """Runs are resumed when complete, so their folder names the dataset and every setting."""
    settings = json.dumps([args.config, args.set, args.max_epochs, args.patience])
    tag = hashlib.blake2b(settings.encode(), digest_size=4).hexdigest()
    return os.path.join(args.out, f"runs-{os.path.basename(data)}-{tag}", name)


def run(args: argparse.Namespace, data: str, name: str, seed: int, *extra: str, sets: list[str] | None = None
        ) -> dict:
    out = run_dir(args, data, name)
    cfg = load_config(args.config, [f"data.path={data}", f"run.dir={out}", f"train.seed={seed}",
                                    f"train.max_epochs={args.max_epochs}", f"train.patience={args.patience}",
                                    "train.progress=false", "run.plots=false", *(args.set if sets is None else sets),
                                    *extra])
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
    p.add_argument("--missing-frac", type=float, default=0.0,
                   help="items that lose one modality (compare --set data.missing=mask|mean|zero)")
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    p.add_argument("--independent", action="store_true", help="train wo_weight as its own run")
    p.add_argument("--out", default=os.path.join(margo_home(), "bench-reliability"))
    p.add_argument("--workers", type=int, default=0, help="also train MARGO on this many Ray workers per seed")
    p.add_argument("--dist-set", nargs="*", default=[], help="extra key=value overrides for the N-worker runs")
    p.add_argument("--recall-within", type=float, default=0.0,
                   help="check the N-worker mean test Recall@20 against (1 - this) x the local mean instead")
    args = p.parse_args(argv)
    dims = {k: int(v) for k, v in (part.split(":") for part in args.dims.split(","))}
    rows = []
    for seed in range(args.seeds):
        kind = "" if args.noise_kind == "swap" else f"-{args.noise_kind}"
        kind += f"-missing{args.missing_frac:g}" if args.missing_frac else ""
        data = os.path.join(args.out, f"data-s{seed}-u{args.users}-i{args.items}-n{args.interactions}{kind}")
        ensure_synthetic(SynthSpec(n_users=args.users, n_items=args.items, n_interactions=args.interactions,
                                   modality_dims=dims, seed=seed, unreliable_frac=args.noise,
                                   noise_kind=args.noise_kind, missing_frac=args.missing_frac), data)
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
        if args.workers:
            # one thread per worker; the thread setting of --set is the local runs'
            sets = [s for s in args.set if not s.startswith("train.threads=")]
            tag = hashlib.blake2b(json.dumps(args.dist_set).encode(), digest_size=3).hexdigest() \
                if args.dist_set else ""
            dist = run(args, data, f"margo_n{args.workers}{'-' + tag if tag else ''}", seed, "model.variant=margo",
                       f"dist.workers={args.workers}", "train.threads=1", "dist.cpus_per_worker=1",
                       *args.dist_set, sets=sets)
            rows[-1].update({"dist_auc": dist["weight_auc"], "dist_r20": dist["test"]["recall@20"]})
    print(f"\n{'seed':<6} {'AUC margo':>10} {'AUC wo_cal':>11} {'R@20 margo':>11} {'R@20 wo_cal':>12} "
          f"{'R@20 wo_weight':>15}")
    mean = {k: statistics.mean(x[k] for x in rows) for k in rows[0] if k != "seed"}
    for r in rows + [{"seed": "mean", **mean}]:
        print(f"{r['seed']!s:<6} {r['margo_auc']:>10.4f} {r['wo_cal_auc']:>11.4f} {r['margo_r20']:>11.4f} "
              f"{r['wo_cal_r20']:>12.4f} {r['wo_weight_r20']:>15.4f}")
    print(json.dumps({"mean": mean}))
    if args.workers:
        if args.recall_within > 0:
            return _check_recall(rows, args.workers, args.recall_within, args.dist_set)
        return _check_workers(rows, args.workers)
    ok = mean["margo_auc"] >= 0.75 and mean["margo_auc"] >= mean["wo_cal_auc"] + 0.05 and \
        mean["margo_r20"] > mean["wo_weight_r20"]
    print("acceptance (AUC >= 0.75, >= wo_cal + 0.05, R@20 above wo_weight):", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def _check_workers(rows: list[dict], workers: int) -> int:
    """N-worker means against the local seed range (min to max) widened by 0.005."""
    print(f"\n{'seed':<6} {'AUC local':>10} {f'AUC N={workers}':>10} {'R@20 local':>11} {f'R@20 N={workers}':>11}")
    for r in rows:
        print(f"{r['seed']!s:<6} {r['margo_auc']:>10.4f} {r['dist_auc']:>10.4f} {r['margo_r20']:>11.4f} "
              f"{r['dist_r20']:>11.4f}")
    ok = True
    for what, local, dist in (("weight AUC", "margo_auc", "dist_auc"), ("test recall@20", "margo_r20", "dist_r20")):
        low, high = min(r[local] for r in rows) - 0.005, max(r[local] for r in rows) + 0.005
        mean = statistics.mean(r[dist] for r in rows)
        inside = low <= mean <= high
        ok &= inside
        print(f"{what}: N={workers} mean {mean:.4f}, local range widened by 0.005 [{low:.4f}, {high:.4f}]: "
              f"{'inside' if inside else 'OUTSIDE'}")
    print(f"acceptance ({workers}-worker means within the local seed range +- 0.005):", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def _check_recall(rows: list[dict], workers: int, within: float, dist_set: list[str]) -> int:
    """N-worker mean test Recall@20 against (1 - ``within``) x the local runs' mean."""
    print(f"\n{'seed':<6} {'R@20 local':>11} {f'R@20 N={workers}':>11} {'relative':>9}   N-worker runs: "
          f"{' '.join(dist_set) or 'as the local ones'}")
    for r in rows:
        print(f"{r['seed']!s:<6} {r['margo_r20']:>11.4f} {r['dist_r20']:>11.4f} "
              f"{r['dist_r20'] / r['margo_r20'] - 1:>+9.2%}")
    local, dist = (statistics.mean(r[k] for r in rows) for k in ("margo_r20", "dist_r20"))
    ok = dist >= (1 - within) * local
    print(f"mean test recall@20: local {local:.4f}, N={workers} {dist:.4f} ({dist / local - 1:+.2%}); "
          f"acceptance (within {within:.0%} of local):", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
