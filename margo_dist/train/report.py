"""Using a finished run: evaluate it again, recommend top-K, print its report."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from margo_dist.data.dataset import TEST, VALID
from margo_dist.data.prepare import ITEM_MAP, USER_MAP, raw_id_array, read_id_map
from margo_dist.data.synth import dataset_url
from margo_dist.errors import MargoError
from margo_dist.train.loop import Trainer, load_training_data
from margo_dist.train.metrics import rank_topk, train_mask
from margo_dist.train.rundir import SUMMARY, WEIGHTS, RunDir, write_parquet

METRIC_COLUMNS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def load_trained(run_url: str, overrides: list[str] | None = None) -> tuple[Trainer, str]:
    """A trainer holding the run's final best model, and the stage it belongs to."""
    run = RunDir(run_url)
    cfg = run.load_config(overrides)
    cfg.run.dir = run_url
    cfg.train.progress = False
    data = load_training_data(cfg, build_graphs=False)
    trainer = Trainer(cfg, data, log=lambda _msg: None)
    stage = trainer.stages[-1]
    name = f"best_{stage}.pt"
    if not run.exists(name):
        raise MargoError(f"{run.path(name)} does not exist: the run has not finished its last stage ({stage})")
    trainer.model.load_state_dict(run.load_state(name)["model"])
    return trainer, stage


def evaluate_run(run_url: str, overrides: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Validation and test metrics of the run's final model, recomputed from scratch."""
    trainer, stage = load_trained(run_url, overrides)
    return {"valid": trainer.evaluate(stage, VALID), "test": trainer.evaluate(stage, TEST)}


@torch.no_grad()
def recommend(run_url: str, k: int, out_url: str, user_chunk: int = 4096) -> int:
    """Top-``k`` items per user (training items excluded) to Parquet; returns the row count.

    Columns: user_id, user (the dataset's raw id; the internal id as text where the dataset
    has no id map), rank (1-based), item_id, item, score. A user who saw all but ``n < k``
    items in training gets ``n`` rows (a warning says so): the rest would be training items.
    """
    if k <= 0:
        raise MargoError(f"--k {k} must be > 0")
    trainer, stage = load_trained(run_url)
    model, data = trainer.model, trainer.data
    model.eval()
    users_emb, items_emb = model.encode(trainer.whole_graph, trainer.features)
    uvec, ivec = model.score_vectors(stage, users_emb, items_emb)
    n_users, n_items = data.ds.n_users, data.ds.n_items
    unseen = n_items - np.diff(data.train_csr[0])  # validated: no (user, item) pair twice
    short = unseen < k
    if short.any():
        warnings.warn(f"--k {k} cut to the items a user did not see in training for {int(short.sum())} of "
                      f"{n_users} users (down to {int(unseen.min())} items)", stacklevel=2)
    dataset = dataset_url(trainer.cfg.data.path, progress=False)
    raw_users = raw_id_array(read_id_map(dataset, USER_MAP), n_users)
    raw_items = raw_id_array(read_id_map(dataset, ITEM_MAP), n_items)
    k = min(k, n_items)
    rank = np.arange(1, k + 1, dtype=np.int32)
    parts: list[pa.RecordBatch] = []
    for start in range(0, n_users, user_chunk):
        stop = min(start + user_chunk, n_users)
        scores = uvec[start:stop] @ ivec.t()
        top_i = rank_topk(scores, train_mask(data.train_csr, np.arange(start, stop)), k, inplace=True)
        top_s = scores.gather(1, top_i)
        keep = (rank[None, :] <= unseen[start:stop, None]).flatten()
        users = np.repeat(np.arange(start, stop, dtype=np.int64), k)[keep]
        items = top_i.flatten().cpu().numpy().astype(np.int64)[keep]
        parts.append(pa.record_batch({
            "user_id": pa.array(users), "user": pa.array(raw_users[users], pa.string()),
            "rank": pa.array(np.tile(rank, stop - start)[keep]),
            "item_id": pa.array(items), "item": pa.array(raw_items[items], pa.string()),
            "score": pa.array(top_s.flatten().float().cpu().numpy()[keep])}))
    table = pa.Table.from_batches(parts)
    write_parquet(out_url, table)
    return table.num_rows


def format_table(rows: list[tuple[str, dict[str, float]]], columns: tuple[str, ...] = METRIC_COLUMNS) -> str:
    """A fixed-width table: one row per (label, metrics)."""
    width = max([len(label) for label, _ in rows] + [10])
    lines = [f"{'':<{width}}  " + "  ".join(f"{c:>10}" for c in columns)]
    for label, metrics in rows:
        lines.append(f"{label:<{width}}  " + "  ".join(f"{metrics.get(c, float('nan')):>10.4f}" for c in columns))
    return "\n".join(lines)


def summary_table(summary: dict[str, Any]) -> str:
    """Per stage and final: validation and test metrics."""
    rows: list[tuple[str, dict[str, float]]] = []
    for stage, result in summary.get("stages", {}).items():
        rows.append((f"{stage} valid (epoch {result['best_epoch']})", result["valid"]))
        rows.append((f"{stage} test", result["test"]))
    rows.append(("final valid", summary["valid"]))
    rows.append(("final test", summary["test"]))
    text = f"variant {summary.get('variant')}  modalities {summary.get('modalities')}\n" + format_table(rows)
    if "weight_auc" in summary:
        text += f"\nplanted-noise detection AUC of the learned weights: {summary['weight_auc']:.4f}"
    return text


def report(run_url: str, top: int = 10) -> str:
    """Summary table plus the most and least reliable items per modality (paper Fig. 6)."""
    run = RunDir(run_url)
    summary = run.read_json(SUMMARY)
    text = [summary_table(summary)]
    if run.exists(WEIGHTS):
        table = run.read_table(WEIGHTS)
        names = [c for c in table.column_names if c not in ("item_id", "item")]
        raw = table.column("item").to_pylist() if "item" in table.column_names else None
        item_ids = table.column("item_id").to_numpy()
        text.append("items as " + ("raw id [internal id]=weight" if raw else "internal id=weight"))
        # two modalities' weights sum to 1: the second's lists are the first's, swapped
        for name in names[:1] if len(names) == 2 else names:
            w = table.column(name).to_numpy()
            order = np.argsort(-w, kind="stable")
            for label, picked in (("most", order[:top]), ("least", order[::-1][:top])):
                items = ", ".join((f"{raw[p]} [{item_ids[p]}]" if raw else f"{item_ids[p]}") + f"={w[p]:.3f}"
                                  for p in picked)
                text.append(f"{label} reliable '{name}': {items}")
        if len(names) == 2:
            text.append(f"(two modalities: the most reliable '{names[1]}' items are the least reliable "
                        f"'{names[0]}' ones, and the other way round)")
    return "\n".join(text)
