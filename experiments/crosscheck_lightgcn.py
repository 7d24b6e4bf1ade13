"""Cross-check this project's LightGCN against PyTorch Geometric's on one dataset split.

Why: the ID-only LightGCN baseline is what MARGO's gains are measured against, so
its propagation (symmetric ``D^-1/2 A D^-1/2`` normalisation, mean over layers
0..K) must match a reference implementation. Everything except the model is shared
between the two sides, so a gap in Recall@20 points at the model:

* data: one MMRec-layout folder (``--data``), read with
  ``margo_dist.data.formats.read_dataset``; the split is the file's ``x_label``;
* ours: the real trainer (``margo_dist.train.entry.train``) with
  ``model.variant=lightgcn`` and the defaults of ``configs/default.yaml``
  (dim 64, 2 layers, Adam lr 1e-3, batch 2048, lambda 1e-3);
* PyG: ``torch_geometric.nn.models.LightGCN(n_users + n_items, 64, 2)`` (nodes
  numbered users then items, every training edge in both directions, handed to
  ``get_embedding`` as a sparse CSR adjacency by default -- PyG's ``spmm`` path --
  or as an edge index with ``--pyg-adjacency edge_index``), trained by
  a loop written here that copies ours: the same ``TripletSampler`` batches
  (``np.random.default_rng(seed)``), ``losses.bpr_loss`` on the layer-mean
  embeddings, plus ``losses.embedding_reg`` on the batch's ego embeddings (users;
  positives and negatives together), Adam with the same learning rate, one full
  propagation per batch. PyG keeps its own initialisation (Xavier-uniform, seeded
  with ``torch.manual_seed(seed)``), which has the same variance as our
  Xavier-normal.

Protocol (identical on both sides): train exactly ``--epochs`` epochs (patience is
set to the epoch count, so nothing stops early); after every epoch score the
validation split with ``margo_dist.train.metrics.full_ranking_eval``; keep the
state of the first epoch with the highest validation Recall@20; score the test
split once with that state. This is what the project's trainer does anyway.

Each model's selected state is scored twice on the test split: with the project's
evaluator, and with an independent re-computation written below (per test user,
numpy float64 scores, training items set to -inf, stable argsort, top 20, recall
= |top20 & test items| / |test items|, averaged over users with test items).

A deterministic propagation check runs between the two trainings: from our
model's initial table, PyG's ``get_embedding`` (both adjacency forms) must equal
our ``IdEncoder.encode`` to float32 rounding, and so must the gradient of
``sum(out * r)`` for a fixed random ``r``.

Exit status 1 when the two models' test Recall@20 (project evaluator) differ by
more than ``--tolerance`` (relative to the larger of the two), or when the
propagation check fails.

PyTorch Geometric is a benchmark-only dependency (``pip install torch_geometric``;
its LightGCN needs no compiled extensions).

    python experiments/crosscheck_lightgcn.py --data /tmp/ml100k2 --epochs 30 --seed 1
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from margo_dist.config import Config, load_config
from margo_dist.data import io as mio
from margo_dist.data.dataset import TEST, TRAIN, VALID, Dataset
from margo_dist.data.formats import FEAT_SUFFIX, read_dataset
from margo_dist.errors import DataError
from margo_dist.graph.tensors import FullGraph
from margo_dist.model import losses
from margo_dist.train.batches import TripletSampler
from margo_dist.train.metrics import Csr, csr_from_pairs, full_ranking_eval

TOPK = 20
METRIC = f"recall@{TOPK}"


@dataclass
class SideResult:
    """One model's selected state and its scores."""

    name: str
    best_epoch: int
    valid: float
    test: float
    independent_test: float
    seconds: float
    valid_curve: list[float]


@dataclass
class Split:
    """The dataset's split as the evaluators need it."""

    ds: Dataset
    train_csr: Csr
    heldout: dict[int, Csr]

    def eval_users(self, split: int) -> np.ndarray:
        return np.flatnonzero(np.diff(self.heldout[split][0]) > 0)


def modalities_of(url: str) -> list[str]:
    """Every ``<name>_feat.npy`` in the folder (read_dataset needs them listed)."""
    names = [f[: -len(FEAT_SUFFIX)] for f in mio.listdir(url) if f.endswith(FEAT_SUFFIX)]
    if not names:
        raise DataError(f"{url}: no *{FEAT_SUFFIX} file; the trainer needs at least one modality to be listed")
    return names


def load_split(url: str, modalities: list[str]) -> Split:
    ds = read_dataset(url, modalities=modalities)
    tu, ti = ds.split(TRAIN)
    heldout = {s: csr_from_pairs(*ds.split(s), ds.n_users) for s in (VALID, TEST)}
    return Split(ds, csr_from_pairs(tu, ti, ds.n_users), heldout)


def our_config(args: argparse.Namespace, modality: str, run_dir: str) -> Config:
    overrides = [
        "model.variant=lightgcn", f"data.path={args.data}", f"data.modalities=[{modality}]",
        f"run.dir={run_dir}", f"train.max_epochs={args.epochs}", f"train.patience={args.epochs}",
        f"train.seed={args.seed}", "train.progress=false", "run.plots=false", "run.resume=false",
        f"train.threads={args.threads}", f"train.topk=[{TOPK}]",
    ]
    if args.cache_dir:
        overrides.append(f"graph.cache_dir={args.cache_dir}")
    return load_config(args.config, overrides)


def evaluate_embeddings(users: Tensor, items: Tensor, split: Split, which: int) -> float:
    """The project's evaluator on plain dot-product scores."""
    items_t = items.t().contiguous()
    metrics = full_ranking_eval(lambda ids: users[ids] @ items_t, split.eval_users(which), split.train_csr,
                                split.heldout[which], [TOPK])
    return metrics[METRIC]


def independent_recall(users: np.ndarray, items: np.ndarray, ds: Dataset, k: int = TOPK) -> float:
    """Test Recall@k recomputed without the project's metric code (see the module docstring)."""
    users = users.astype(np.float64)
    items = items.astype(np.float64)
    seen: dict[int, set[int]] = {}
    for u, i in zip(*ds.split(TRAIN)):
        seen.setdefault(int(u), set()).add(int(i))
    truth: dict[int, set[int]] = {}
    for u, i in zip(*ds.split(TEST)):
        truth.setdefault(int(u), set()).add(int(i))
    total = 0.0
    for u, relevant in truth.items():
        scores = items @ users[u]
        for i in seen.get(u, ()):
            scores[i] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        total += len(relevant.intersection(int(i) for i in top)) / len(relevant)
    return total / len(truth) if truth else 0.0


def run_ours(cfg: Config, split: Split) -> tuple[SideResult, Tensor, FullGraph]:
    """The project's trainer end to end; returns its result, initial embedding table and graph."""
    from margo_dist.model.margo import build_model
    from margo_dist.train.entry import train
    from margo_dist.train.report import load_trained
    from margo_dist.train.rundir import RunDir

    initial = build_model(split.ds.n_users, split.ds.n_items, [], cfg.model, cfg.train.seed)
    init_table = initial.encoder.embedding.all_rows().detach().clone()
    t0 = time.time()
    summary = train(cfg, log=lambda msg: print(f"  ours {msg}", flush=True))
    seconds = time.time() - t0
    stage = summary["stages"]["pretrain"]
    trainer, _ = load_trained(cfg.run.dir)
    with torch.no_grad():
        trainer.model.eval()
        u, i = trainer.model.encode(trainer.whole_graph, trainer.features)
        u, i = u.flatten(1), i.flatten(1)
    recheck = evaluate_embeddings(u, i, split, TEST)
    if abs(recheck - summary["test"][METRIC]) > 1e-6:
        raise RuntimeError(f"re-scoring the saved best state gives test {METRIC} {recheck:.6f}, "
                           f"summary.json says {summary['test'][METRIC]:.6f}")
    records = RunDir(cfg.run.dir).read_metrics()
    curve = [float(r["valid"][METRIC]) for r in records]
    result = SideResult("ours (margo_dist IdEncoder)", int(stage["best_epoch"]), float(summary["valid"][METRIC]),
                        float(summary["test"][METRIC]), independent_recall(u.numpy(), i.numpy(), split.ds),
                        seconds, curve)
    return result, init_table, trainer.whole_graph


def pyg_edge_index(ds: Dataset) -> Tensor:
    """Training edges, users then items, both directions: [2, 2E]."""
    u, i = ds.split(TRAIN)
    u = torch.from_numpy(u.astype(np.int64))
    i = torch.from_numpy(i.astype(np.int64)) + ds.n_users
    return torch.stack([torch.cat([u, i]), torch.cat([i, u])])


def pyg_adjacency(ds: Dataset, form: str) -> Tensor:
    """The graph as PyG's ``LGConv`` takes it: an edge index, or the same edges as sparse CSR.

    Both are PyG code paths (its ``gcn_norm``, then scatter or ``spmm``); CSR is
    several times faster on CPU. The graph is symmetric, so the transpose that PyG
    expects of a sparse adjacency is the matrix itself.
    """
    edge_index = pyg_edge_index(ds)
    if form == "edge_index":
        return edge_index
    from torch_geometric.utils import to_torch_csr_tensor

    n = ds.n_users + ds.n_items
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        return to_torch_csr_tensor(edge_index, size=(n, n))


def check_propagation(cfg: Config, split: Split, init_table: Tensor, graph: FullGraph) -> dict[str, float]:
    """Max |PyG - ours| of the layer-mean output and of its gradient, from one table.

    Same initial table, same random cotangent; PyG runs on each adjacency form.
    """
    from torch_geometric.nn.models import LightGCN

    from margo_dist.model.margo import build_model

    ds = split.ds
    ours = build_model(ds.n_users, ds.n_items, [], cfg.model, cfg.train.seed)
    table_param = ours.encoder.embedding.weight
    with torch.no_grad():
        table_param.copy_(init_table)
    cotangent = torch.randn(init_table.shape, generator=torch.Generator().manual_seed(cfg.train.seed))
    u, i = ours.encode(graph, [])
    mine = torch.cat([u.flatten(1), i.flatten(1)])
    (mine * cotangent).sum().backward()
    gaps: dict[str, float] = {}
    for form in ("edge_index", "csr"):
        pyg = LightGCN(ds.n_users + ds.n_items, cfg.model.dim, cfg.model.n_layers)
        with torch.no_grad():
            pyg.embedding.weight.copy_(init_table)
        theirs = pyg.get_embedding(pyg_adjacency(ds, form))
        (theirs * cotangent).sum().backward()
        gaps[f"{form} output"] = float((mine.detach() - theirs.detach()).abs().max())
        gaps[f"{form} gradient"] = float((table_param.grad - pyg.embedding.weight.grad).abs().max())
    return gaps


def run_pyg(cfg: Config, split: Split, form: str) -> SideResult:
    """PyG's LightGCN under the project's sampler, loss, optimiser and selection rule."""
    from torch_geometric.nn.models import LightGCN

    ds = split.ds
    torch.manual_seed(cfg.train.seed)
    model = LightGCN(ds.n_users + ds.n_items, cfg.model.dim, cfg.model.n_layers)
    edge_index = pyg_adjacency(ds, form)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True)  # as Trainer.new_optimizer
    sampler = TripletSampler(*ds.split(TRAIN), ds.n_items, cfg.train.batch_size)
    rng = np.random.default_rng(cfg.train.seed)
    best_metric, best_epoch, best_state = -1.0, 0, None
    curve: list[float] = []
    t0 = time.time()
    for epoch in range(1, cfg.train.max_epochs + 1):
        te = time.time()
        total, n = 0.0, 0
        model.train()
        for u, i, j in sampler.epoch(rng):
            users = torch.from_numpy(u)
            pos = torch.from_numpy(i) + ds.n_users
            neg = torch.from_numpy(j) + ds.n_users
            emb = model.get_embedding(edge_index)
            eu = emb[users]
            bpr = losses.bpr_loss((eu * emb[pos]).sum(1), (eu * emb[neg]).sum(1))
            ego = model.embedding.weight
            reg = losses.embedding_reg([ego[users], ego[torch.cat([pos, neg])]], cfg.model.reg_weight)
            loss = bpr + reg
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            n += 1
        with torch.no_grad():
            model.eval()
            emb = model.get_embedding(edge_index)
        metric = evaluate_embeddings(emb[: ds.n_users], emb[ds.n_users:], split, VALID)
        curve.append(metric)
        improved = metric > best_metric
        if improved:
            best_metric, best_epoch, best_state = metric, epoch, copy.deepcopy(model.state_dict())
        print(f"  pyg  [pretrain] epoch {epoch:3d}  loss {total / max(n, 1):.4f}  valid {METRIC} {metric:.4f}"
              f"{'  *' if improved else ''}  ({time.time() - te:.1f}s)", flush=True)
    seconds = time.time() - t0
    assert best_state is not None
    model.load_state_dict(best_state)
    with torch.no_grad():
        model.eval()
        emb = model.get_embedding(edge_index)
    users, items = emb[: ds.n_users], emb[ds.n_users:]
    return SideResult(f"PyG LightGCN ({form})", best_epoch, best_metric, evaluate_embeddings(users, items, split, TEST),
                      independent_recall(users.numpy(), items.numpy(), ds), seconds, curve)


def table(rows: list[SideResult]) -> str:
    head = (f"{'model':<28} | {'evaluator':<17} | {'best ep':>7} | {'valid R@20':>10} | {'test R@20':>9} | "
            f"{'independent test R@20':>21} | {'train s':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.name:<28} | {'full_ranking_eval':<17} | {r.best_epoch:>7d} | {r.valid:>10.4f} | "
                     f"{r.test:>9.4f} | {r.independent_test:>21.4f} | {r.seconds:>7.1f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="MMRec-layout dataset folder (e.g. MovieLens-100k)")
    p.add_argument("--epochs", type=int, default=30, help="epochs both models train (no early stop)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tolerance", type=float, default=0.05, help="max relative gap of the test Recall@20")
    p.add_argument("--config", default="configs/default.yaml", help="base config of our side")
    p.add_argument("--cache-dir", default="", help="graph artefact cache (default: <data>/.margo_cache)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--pyg-adjacency", choices=["csr", "edge_index"], default="csr",
                   help="graph form handed to PyG's LightGCN (csr: spmm, edge_index: scatter, ~5x slower)")
    p.add_argument("--run-dir", default="", help="keep our run folder here (default: a temporary folder)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    modalities = modalities_of(args.data)
    split = load_split(args.data, modalities)
    ds = split.ds
    print(f"dataset {args.data}: {ds.n_users} users, {ds.n_items} items, "
          f"train/valid/test {[int((ds.label == s).sum()) for s in (TRAIN, VALID, TEST)]}; "
          f"{args.epochs} epochs, seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="crosscheck_lightgcn_") as tmp:
        cfg = our_config(args, modalities[0], args.run_dir or mio.join(tmp, "ours"))
        print(f"model: dim {cfg.model.dim}, {cfg.model.n_layers} layers, lambda {cfg.model.reg_weight}; "
              f"Adam lr {cfg.train.lr}, batch {cfg.train.batch_size}", flush=True)
        ours, init_table, graph = run_ours(cfg, split)
        gaps = check_propagation(cfg, split, init_table, graph)
    print("propagation check, max |PyG get_embedding - IdEncoder.encode| from the same table: "
          + ", ".join(f"{k} {v:.3g}" for k, v in gaps.items()))
    theirs = run_pyg(cfg, split, args.pyg_adjacency)
    print()
    print(table([ours, theirs]))
    print("valid R@20 per epoch (ours / PyG):")
    for e, (a, b) in enumerate(zip(ours.valid_curve, theirs.valid_curve), start=1):
        print(f"  {e:3d}  {a:.4f}  {b:.4f}")
    rel = abs(ours.test - theirs.test) / max(ours.test, theirs.test, 1e-12)
    print(f"relative difference of test {METRIC} (project evaluator): {rel:.2%} (tolerance {args.tolerance:.0%})")
    for r in (ours, theirs):
        d = abs(r.test - r.independent_test)
        print(f"{r.name}: project vs independent evaluator differ by {d:.2e}")
    ok = rel <= args.tolerance and max(gaps.values()) < 1e-4
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
