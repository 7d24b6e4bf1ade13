"""MARGO against its ablations and baselines over seeds, every stage 2 from the same stage 1.

Per seed: one MARGO run (stage 1 = w/o weight, then stage 2 with the defaults), then
from that run's stage 1 (``run.pretrained``) MARGO with the stage-start rule off and
with ``model.fusion_scale=num_modalities`` (rule on and off), and w/o L_cal; DRAGON
and LightGCN train on their own. Prints test Recall/NDCG@20 as mean, standard
deviation and range over the seeds, and how often stage 2 kept its starting state.

    python experiments/table_stage_start.py --data data/ml-100k --modalities title,genre \
        --runs runs/stage-start --seeds 0,1,2 --jobs 2 [--set train.threads=1 ...]

Runs are ordinary run folders: a rerun reuses every finished one (``run.dir`` resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROWS = [
    # (row name, run folder, overrides, needs the seed's MARGO run as run.pretrained)
    ("MARGO (rule on, scale one)", "margo", ["model.variant=margo"], False),
    ("MARGO (rule off, scale one)", "margo_off", ["model.variant=margo", "train.eval_stage_start=false"], True),
    ("MARGO (rule on, scale M)", "margo_m", ["model.variant=margo", "model.fusion_scale=num_modalities"], True),
    ("MARGO (rule off, scale M)", "margo_m_off", ["model.variant=margo", "model.fusion_scale=num_modalities",
                                                  "train.eval_stage_start=false"], True),
    ("w/o L_cal (rule on)", "wo_cal", ["model.variant=wo_cal"], True),
    ("DRAGON", "dragon", ["model.variant=dragon"], False),
    ("LightGCN", "lightgcn", ["model.variant=lightgcn"], False),
]
METRICS = ("recall@20", "ndcg@20")


def run_one(args: argparse.Namespace, seed: int, folder: str, overrides: list[str], pretrained: bool) -> dict:
    """Train one run in its own process (or reuse it) and return its summary."""
    run_dir = os.path.join(args.runs, f"seed{seed}", folder)
    summary_path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(summary_path):
        extra = [f"run.pretrained={os.path.join(args.runs, f'seed{seed}', 'margo')}"] if pretrained else []
        cmd = [sys.executable, "-m", "margo_dist.cli", "train", "--config", args.config,
               f"data.path={args.data}", f"data.modalities=[{args.modalities}]", f"train.seed={seed}",
               "train.progress=false", f"run.dir={run_dir}", *overrides, *extra, *args.set]
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "log.txt"), "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    with open(summary_path) as fh:
        return json.load(fh)


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f} [{min(values):.4f}, {max(values):.4f}]"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--modalities", required=True, help="comma-separated, e.g. title,genre")
    p.add_argument("--runs", default="runs/stage-start")
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    p.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        # every seed's MARGO run first: the stage-2 rows start from its stage 1
        firsts = {s: pool.submit(run_one, args, s, *ROWS[0][1:]) for s in seeds}
        standalone = {(s, r[1]): pool.submit(run_one, args, s, *r[1:]) for s in seeds for r in ROWS[1:]
                      if not r[3]}
        summaries = {(s, "margo"): f.result() for s, f in firsts.items()}
        later = {(s, r[1]): pool.submit(run_one, args, s, *r[1:]) for s in seeds for r in ROWS[1:] if r[3]}
        summaries.update({k: f.result() for k, f in {**standalone, **later}.items()})

    header = "| model | " + " | ".join(f"test {m} (mean ± sd [min, max])" for m in METRICS) + \
             " | stage 2 kept its start |"
    print(header)
    print("|" + "---|" * (len(METRICS) + 2))
    stage1 = [summaries[(s, "margo")]["stages"]["pretrain"]["test"] for s in seeds]
    print("| w/o weight (= stage 1) | " + " | ".join(spread([t[m] for t in stage1]) for m in METRICS) + " | |")
    for name, folder, _, _ in ROWS:
        runs = [summaries[(s, folder)] for s in seeds]
        kept = sum(1 for r in runs if "calibrate" in r["stages"] and r["stages"]["calibrate"]["best_epoch"] == 0)
        has_stage2 = any("calibrate" in r["stages"] for r in runs)
        print(f"| {name} | " + " | ".join(spread([r["test"][m] for r in runs]) for m in METRICS) +
              f" | {f'{kept}/{len(runs)}' if has_stage2 else ''} |")
    margo = [summaries[(s, "margo")]["test"]["recall@20"] for s in seeds]
    diffs = [a - t["recall@20"] for a, t in zip(margo, stage1)]
    print(f"\nMARGO - w/o weight, test recall@20 per seed: {', '.join(f'{d:+.4f}' for d in diffs)}; "
          f"seed spread (sd) of w/o weight: {statistics.stdev([t['recall@20'] for t in stage1]):.4f}"
          if len(seeds) > 1 else "")


if __name__ == "__main__":
    main()
