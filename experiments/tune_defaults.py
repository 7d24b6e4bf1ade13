"""What a finished search chose, next to a reference: the table behind configs/default.yaml's α and τ.

For the chosen and the runner-up trial of a search folder (``margo-dist tune``; ranked by
the search's validation metric, as the search selects), it loads the trial's best state
and prints validation and test Recall@20, the weight AUC on planted data, and each
modality's weight spread (5th to 95th percentile of the learned item weights). The
reference row is ``wo_cal`` (stage 2 by BPR alone, α = 0) trained from the same stage 1
as the search's stage-2 trials; the last column is each row's AUC minus the reference's.
The test split is read here, after the selection, never by the search's trials.

    python experiments/tune_defaults.py runs/search-planted
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from typing import Any

import numpy as np


def trial_facts(run_dir: str) -> dict[str, Any]:
    """Validation and test metrics, weight AUC and weight spread of a run's best state."""
    from margo_dist.data.dataset import TEST, VALID
    from margo_dist.train.report import load_trained

    trainer, stage = load_trained(run_dir, ["train.test_split=true"])
    weights = trainer.item_weight_table()
    spread = {m: (float(np.percentile(weights[:, k], 5)), float(np.percentile(weights[:, k], 95)))
              for k, m in enumerate(trainer.data.modalities)} if weights is not None else {}
    return {"valid": trainer.evaluate(stage, VALID), "test": trainer.evaluate(stage, TEST),
            "weight_auc": trainer.weight_auc(), "spread": spread}


def reference(search_dir: str, stage1_run: str, chosen_run: str) -> str:
    """Train (once; resumed or reused after) ``wo_cal`` at α = 0 from the search's stage 1."""
    from margo_dist.train.entry import train
    from margo_dist.train.rundir import RunDir

    out = os.path.join(search_dir, "reference-wo_cal")
    cfg = RunDir(chosen_run).load_config(["model.variant=wo_cal", "model.alpha=0", f"run.pretrained={stage1_run}",
                                          f"run.dir={out}", "train.test_split=true", "run.plots=false"])
    train(cfg, log=lambda _m: None)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("search", help="a search folder written by margo-dist tune")
    args = parser.parse_args(argv)
    summary = json.load(open(os.path.join(args.search, "search.json")))
    metric = summary["metric"]
    with open(os.path.join(args.search, "trials.csv")) as fh:
        rows = list(csv.DictReader(fh))
    final = "stage2" if summary["staged"] else "all"
    ranked = sorted((r for r in rows if r["phase"] == final and r.get(f"valid_{metric}")),
                    key=lambda r: float(r[f"valid_{metric}"]), reverse=True)
    if not ranked:
        raise SystemExit(f"{args.search}: no {final} trial with a validation {metric}")
    keys = list(summary["best"]["keys"])
    table: list[tuple[str, dict[str, str], dict[str, Any]]] = []
    for label, row in zip(("chosen", "runner-up"), ranked[:2]):
        table.append((label, {k: row.get(k, "") for k in keys}, trial_facts(row["run"])))
    if summary["staged"]:
        stage1 = [r for r in rows if r["phase"] == "stage1"]
        best1 = max(stage1, key=lambda r: float(r[f"valid_{metric}"]))
        ref = reference(args.search, best1["run"], ranked[0]["run"])
        table.append(("wo_cal, α = 0 (same stage 1)", {k: "" for k in keys} | {"model.alpha": "0"},
                      trial_facts(ref)))
    base_auc = table[-1][2]["weight_auc"] if summary["staged"] else None
    modalities = list(table[0][2]["spread"])
    head = ["setting", *keys, f"valid {metric}", f"test {metric}", "weight AUC",
            *(f"{m} weight p5-p95" for m in modalities), "AUC - reference"]
    print(f"search {args.search}: {summary['trials']} trials, chosen by validation {metric}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, values, facts in table:
        auc = facts["weight_auc"]
        cells = [label, *(values[k] for k in keys), f"{facts['valid'][metric]:.4f}", f"{facts['test'][metric]:.4f}",
                 "-" if auc is None else f"{auc:.4f}",
                 *(f"{lo:.3f}-{hi:.3f}" for lo, hi in facts["spread"].values()),
                 "-" if auc is None or base_auc is None else f"{auc - base_auc:+.4f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
