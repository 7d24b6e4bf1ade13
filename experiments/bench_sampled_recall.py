"""Sampled vs full-graph training to early stop: test Recall@20 and time.

Trains the same variant twice on one dataset, ``train.mode=full`` and
``train.mode=sampled`` with ``--fanouts``, each to early stop on validation Recall@20,
and prints both test metrics, the relative gap and the wall time. The issue's target:
on the Baby shape, sampled within 3% (relative) of full.

    python experiments/bench_sampled_recall.py --data DIR
    python experiments/bench_sampled_recall.py --data DIR --variant margo --fanouts "{ui: [10, 10], iu: [10, 10], ii: [10], uu: [20]}"
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from margo_dist.config import load_config
from margo_dist.train.entry import train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder (MMRec layout)")
    p.add_argument("--variant", default="wo_weight")
    p.add_argument("--fanouts", default="{ui: [10, 10], iu: [10, 10], ii: [10], uu: [20]}")
    p.add_argument("--out", default="runs/bench-sampled-recall")
    p.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for both runs")
    args = p.parse_args(argv)
    results = {}
    for mode in ("full", "sampled"):
        cfg = load_config("configs/default.yaml", [
            f"data.path={args.data}", f"model.variant={args.variant}", f"train.mode={mode}",
            f"sampler.fanouts={args.fanouts}", f"run.dir={os.path.join(args.out, mode)}", "train.progress=false",
            "run.plots=false", *args.set])
        t0 = time.time()
        summary = train(cfg, log=lambda _m: None)
        results[mode] = (summary, time.time() - t0)
        print(f"{mode:<8} test recall@20 {summary['test']['recall@20']:.4f}  ndcg@20 {summary['test']['ndcg@20']:.4f}"
              f"  ({results[mode][1]:.0f}s)", flush=True)
    full, sampled = results["full"][0]["test"]["recall@20"], results["sampled"][0]["test"]["recall@20"]
    gap = (sampled - full) / full
    print(f"relative gap of sampled vs full test recall@20: {gap:+.2%} (target: within 3%)")
    return 0 if abs(gap) <= 0.03 else 1


if __name__ == "__main__":
    sys.exit(main())
