"""How much do L_cal and BPR each say about which modality of an item is the noisy one?

Takes a trained run on a synthetic dataset with planted noise, freezes its best stage-1
(pretrained) state, draws training triplets as the trainer does, and accumulates per
item the two signals that move the item weights θ at the start of stage 2 (w = 1/M):

  L_cal  the confidence-weighted reliability vector sum(gamma * z) / sum(gamma)
         (Eqs. 5-8): the distribution Eq. 8 pulls (w_i + w_j) / 2 towards;
  BPR    the descent direction of L_rec on item i's weights, sigma(y_uj - y_ui) *
         (r^m - mean_m r) for a positive and its negative for a negative (Eq. 4), averaged.

each from the triplets where the item is the positive, the negative, and both (what
training sees). Prints the ROC AUC of each signal as a detector of the planted noisy
(item, modality) pairs: how well the weights could rank them by following that signal
alone. If L_cal's "both" is not above BPR's, L_cal cannot add much over w/o L_cal.

    python experiments/reliability_signal.py RUN [--epochs 20] [--tau 0.1]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from margo_dist.data.dataset import TRAIN
from margo_dist.model import losses
from margo_dist.model.margo import PRETRAIN, build_model, modality_ratings
from margo_dist.train.batches import TripletSampler
from margo_dist.train.loop import load_training_data
from margo_dist.train.metrics import weight_detection_auc
from margo_dist.train.rundir import RunDir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder with best_pretrain.pt (e.g. a bench_reliability margo run)")
    p.add_argument("--epochs", type=int, default=20, help="epochs of triplets to accumulate")
    p.add_argument("--tau", type=float, default=None, help="confidence sensitivity (default: the run's model.tau)")
    args = p.parse_args(argv)
    run = RunDir(args.run)
    cfg = run.load_config()
    tau = cfg.model.tau if args.tau is None else args.tau
    data = load_training_data(cfg, build_graphs=False)
    if data.truth is None:
        raise SystemExit(f"{data.url} has no planted-noise truth (not a synthetic dataset)")
    model = build_model(data.ds.n_users, data.ds.n_items, [f.shape[1] for f in data.features], cfg.model, 0)
    model.load_state_dict(run.load_state(f"best_{PRETRAIN}.pt")["model"])
    model.eval()
    with torch.no_grad():
        users_emb, items_emb = model.encode(data.graph.compute_graph(model.encoder.n_layers), data.features)
    n, m = data.ds.n_items, model.n_slices
    sums = {key: torch.zeros(n, m, dtype=torch.float64) for key in ("cal_pos", "cal_neg", "bpr_pos", "bpr_neg")}
    mass = {key: torch.zeros(n, dtype=torch.float64) for key in ("cal_pos", "cal_neg", "bpr_pos", "bpr_neg")}
    sampler = TripletSampler(*data.ds.split(TRAIN), n, cfg.train.batch_size)
    rng = np.random.default_rng(cfg.train.seed)
    for _ in range(args.epochs):
        for u, i, j in sampler.epoch(rng):
            u, i, j = (torch.from_numpy(a) for a in (u, i, j))
            r_pos, r_neg = modality_ratings(users_emb[u], items_emb[i]), modality_ratings(users_emb[u], items_emb[j])
            z, agree = losses.reliability(r_pos, r_neg)
            y_pos, y_neg = r_pos.mean(1), r_neg.mean(1)  # w = 1/M at the start of stage 2
            gamma = (losses.confidence(y_pos, y_neg, tau) * agree).double()
            slack = torch.sigmoid(y_neg - y_pos).double()
            for key, items, value, weight in (
                    ("cal_pos", i, gamma[:, None] * z, gamma), ("cal_neg", j, gamma[:, None] * z, gamma),
                    ("bpr_pos", i, slack[:, None] * (r_pos - y_pos[:, None]), torch.ones_like(slack)),
                    ("bpr_neg", j, -slack[:, None] * (r_neg - y_neg[:, None]), torch.ones_like(slack))):
                sums[key].index_add_(0, items, value.double())
                mass[key].index_add_(0, items, weight)
    truth = torch.from_numpy(data.truth)

    def auc(*keys: str) -> float:
        total = sum(sums[k] for k in keys)
        weight = sum(mass[k] for k in keys).clamp(min=1e-12)
        return weight_detection_auc((total / weight[:, None]).float(), truth)

    print(f"run {args.run}  (tau {tau}, {args.epochs} epochs of triplets, {int(truth.sum())} noisy pairs)")
    print(f"{'signal':<8} {'as positive':>12} {'as negative':>12} {'both':>8}")
    for name in ("cal", "bpr"):
        print(f"{'L_cal' if name == 'cal' else 'BPR':<8} {auc(name + '_pos'):>12.4f} {auc(name + '_neg'):>12.4f} "
              f"{auc(name + '_pos', name + '_neg'):>8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
