"""One training loop for every variant: stages, early stopping, checkpoints, outputs.

Stage 1 (pretrain, sum fusion) runs to early stop on validation Recall@20; stage 2
(calibrate) starts from the best stage-1 state with a fresh θ and runs to early
stop. The test split is scored once per stage, after that stage's selection.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from margo_dist.config import Config
from margo_dist.data import io as mio
from margo_dist.data.dataset import TEST, TRAIN, VALID, Dataset
from margo_dist.graph.tensors import Batch, FullGraph, full_graph
from margo_dist.errors import MargoError
from margo_dist.model.margo import CALIBRATE, PRETRAIN, Recommender, build_model, stages_for
from margo_dist.model.objective import LossParts, triplet_loss
from margo_dist.train.batches import TripletSampler
from margo_dist.train.metrics import csr_from_pairs, full_ranking_eval, weight_detection_auc
from margo_dist.train.rundir import CHECKPOINT, SUMMARY, RunDir


@dataclass
class TrainingData:
    """Everything a run reads: the dataset, its graph tensors and the split indexes."""

    ds: Dataset
    url: str
    modalities: list[str]
    graph: FullGraph
    features: list[Tensor]
    train_csr: tuple[np.ndarray, np.ndarray]
    heldout: dict[int, tuple[np.ndarray, np.ndarray]]
    truth: np.ndarray | None  # planted unreliable pairs of a synthetic dataset

    def eval_users(self, split: int) -> np.ndarray:
        indptr = self.heldout[split][0]
        return np.flatnonzero(np.diff(indptr) > 0)


def dataset_url(cfg: Config, progress: bool = True) -> str:
    """``data.path``, or the built-in synthetic dataset (made on first use)."""
    if cfg.data.path:
        return cfg.data.path
    from margo_dist.data.synth import ensure_default_dataset

    return ensure_default_dataset(progress)


def load_training_data(cfg: Config, build_graphs: bool = True) -> TrainingData:
    """Read and validate the dataset, load (or build once) its graph artefacts."""
    from margo_dist.data.formats import read_dataset_cfg
    from margo_dist.graph.build import load_graph_source

    url = dataset_url(cfg, cfg.train.progress)
    data_cfg = copy.copy(cfg.data)
    data_cfg.path = url
    ds = read_dataset_cfg(data_cfg)
    modalities = list(cfg.data.modalities)
    art = load_graph_source(ds, url, cfg.graph, modalities, build=build_graphs)
    graph = full_graph(art, modalities, cfg.graph.knn_mix)
    dtype = torch.float16 if cfg.data.feature_dtype == "float16" else torch.float32
    features = [torch.from_numpy(np.ascontiguousarray(ds.features[m])).to(dtype) for m in modalities]
    tu, ti = ds.split(TRAIN)
    heldout = {s: csr_from_pairs(*ds.split(s), ds.n_users) for s in (VALID, TEST)}
    return TrainingData(ds=ds, url=url, modalities=modalities, graph=graph, features=features,
                        train_csr=csr_from_pairs(tu, ti, ds.n_users), heldout=heldout,
                        truth=_load_truth(url, modalities))


def _load_truth(url: str, modalities: list[str]) -> np.ndarray | None:
    from margo_dist.data.synth import META_FILE, load_truth

    if not mio.exists(mio.join(url, META_FILE)):
        return None
    names, truth = load_truth(url)
    if not set(modalities) <= set(names):
        return None
    return truth[:, [names.index(m) for m in modalities]]


class Trainer:
    """Runs the stages of ``cfg.model.variant`` on ``data``, writing to ``cfg.run.dir``."""

    def __init__(self, cfg: Config, data: TrainingData, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.data = data
        self.log = log
        self.device = torch.device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self.run = RunDir(cfg.run.dir)
        self.stages = stages_for(cfg.model.variant)
        uses_features = cfg.model.variant not in ("lightgcn", "bpr_mf")
        dims = [f.shape[1] for f in data.features] if uses_features else []
        self.model: Recommender = build_model(data.ds.n_users, data.ds.n_items, dims, cfg.model,
                                              cfg.train.seed).to(self.device)
        self.graph = data.graph.to(self.device).compute_graph(self.model.encoder.n_layers)
        self.features = [f.to(self.device) for f in data.features]
        tu, ti = data.ds.split(TRAIN)
        self.sampler = TripletSampler(tu, ti, data.ds.n_items, cfg.train.batch_size)
        self.records: list[dict[str, Any]] = []
        self.block_sampler = None
        if cfg.train.mode == "sampled":
            from margo_dist.graph.sample import BlockSampler

            self.block_sampler = BlockSampler(data.graph, cfg.sampler.fanouts, self.model.encoder.n_layers)

    # -- evaluation -------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, stage: str, split: int) -> dict[str, float]:
        """Full ranking of ``split`` with embeddings recomputed now (never cached)."""
        self.model.eval()
        users_emb, items_emb = self.model.encode(self.graph, self.features)
        uvec, ivec = self.model.score_vectors(stage, users_emb, items_emb)
        ivec_t = ivec.t().contiguous()

        def score(ids: Tensor) -> Tensor:
            return uvec[ids.to(self.device)] @ ivec_t

        self.model.train()
        return full_ranking_eval(score, self.data.eval_users(split), self.data.train_csr,
                                 self.data.heldout[split], self.cfg.train.topk, self.cfg.train.eval_user_chunk,
                                 fresh_scores=True)

    def weight_auc(self) -> float | None:
        """Planted-noise detection AUC of the current item weights (synthetic data with θ only)."""
        if self.model.theta is None or self.data.truth is None:
            return None
        return weight_detection_auc(self.model.item_weights().detach().float().cpu(), torch.from_numpy(self.data.truth))

    @torch.no_grad()
    def item_weight_table(self) -> np.ndarray | None:
        if self.model.theta is None:
            return None
        return self.model.item_weights().float().cpu().numpy()

    # -- training ---------------------------------------------------------------------

    def train_step(self, stage: str, batch: Batch, optimizer: torch.optim.Optimizer) -> LossParts:
        """One optimiser step on one batch; embeddings are computed afresh for it."""
        b = batch.to(self.device)
        users_emb, items_emb = self.model.encode(b.graph, self.features)
        parts = triplet_loss(self.model, stage, self.cfg.model, users_emb[b.users_local],
                             items_emb[b.pos_local], items_emb[b.neg_local], b.users, b.pos, b.neg)
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        optimizer.step()
        return parts

    def _train_epoch(self, stage: str, optimizer: torch.optim.Optimizer, rng: np.random.Generator,
                     desc: str) -> dict[str, float]:
        sums = {"loss": 0.0, "bpr": 0.0, "cal": 0.0, "reg": 0.0, "calibrated": 0.0}
        n = 0
        bar = tqdm(self._batches(rng), total=len(self.sampler), desc=desc, leave=False,
                   disable=not self.cfg.train.progress, dynamic_ncols=True)
        for batch in bar:
            parts = self.train_step(stage, batch, optimizer)
            loss = float(parts.total.detach())
            if not np.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} in stage {stage} ({desc}); "
                                         f"bpr={parts.bpr} cal={parts.cal} reg={parts.reg}")
            for key, value in (("loss", loss), ("bpr", parts.bpr), ("cal", parts.cal), ("reg", parts.reg),
                               ("calibrated", parts.calibrated)):
                sums[key] += value
            n += 1
            bar.set_postfix(loss=f"{loss:.4f}")
        return {k: v / max(n, 1) for k, v in sums.items()}

    def _batches(self, rng: np.random.Generator) -> Iterator[Batch]:
        """One epoch of batches: on the whole graph, or with sampled blocks."""
        if self.block_sampler is None:
            for u, i, j in self.sampler.epoch(rng):
                yield Batch.full(self.graph, *(torch.from_numpy(a) for a in (u, i, j)))
            return
        from margo_dist.graph.sample import sampled_batches

        triplets = list(self.sampler.epoch(rng))
        seed = int(rng.integers(0, 2**31 - 1))
        yield from sampled_batches(self.block_sampler, triplets, seed, self.cfg.sampler.num_workers)

    def new_optimizer(self) -> torch.optim.Optimizer:
        """Adam (fused: one kernel for every tensor, 5x faster than the default on CPU); the
        fusion-weight tables get ``train.weight_lr`` when it is set."""
        weight_tables = [t for t in (self.model.theta, self.model.user_weight) if t is not None]
        if self.cfg.train.weight_lr <= 0 or not weight_tables:
            return torch.optim.Adam(self.model.parameters(), lr=self.cfg.train.lr, fused=True)
        tables = [p for t in weight_tables for p in t.parameters()]
        table_ids = {id(p) for p in tables}
        rest = [p for p in self.model.parameters() if id(p) not in table_ids]
        return torch.optim.Adam([{"params": rest}, {"params": tables, "lr": self.cfg.train.weight_lr}],
                                lr=self.cfg.train.lr, fused=True)

    def _fresh_stage_state(self, stage_index: int) -> dict[str, Any]:
        return {"stage_index": stage_index, "epoch": 0, "best_metric": -1.0, "best_epoch": 0, "bad_evals": 0,
                "best_valid": {}}

    def _start_stage(self, stage_index: int) -> None:
        """Entering a stage: calibration starts from the best pretrained state, fresh θ."""
        stage = self.stages[stage_index]
        if stage_index > 0:
            prev = self.stages[stage_index - 1]
            self.model.load_state_dict(self.run.load_state(f"best_{prev}.pt")["model"])
        if stage == CALIBRATE and self.model.theta is not None:
            gen = torch.Generator().manual_seed(self.cfg.train.seed + 7919 * (stage_index + 1))
            self.model.theta.reset(self.cfg.model.theta_init_std, gen)

    def fit(self) -> dict[str, Any]:
        """Train every stage to early stop; write and return the summary."""
        cfg = self.cfg
        t_start = time.time()
        state, optimizer, rng = self._resume()
        if state.get("done"):
            self.log(f"run {self.run.url} is already complete; summary.json holds its result")
            return self.run.read_json(SUMMARY)
        summary_stages: dict[str, Any] = state.setdefault("stage_results", {})
        while state["stage_index"] < len(self.stages):
            stage = self.stages[state["stage_index"]]
            while state["epoch"] < cfg.train.max_epochs and state["bad_evals"] < cfg.train.patience:
                state["epoch"] += 1
                epoch = state["epoch"]
                t0 = time.time()
                desc = f"{stage} {epoch}/{cfg.train.max_epochs}"
                losses = self._train_epoch(stage, optimizer, rng, desc)
                train_s = time.time() - t0
                if epoch % cfg.train.eval_every == 0 or epoch == cfg.train.max_epochs:
                    t1 = time.time()
                    valid = self.evaluate(stage, VALID)
                    eval_s = time.time() - t1
                    metric = valid[cfg.train.select_metric]
                    improved = metric > state["best_metric"]
                    if improved:
                        state.update(best_metric=metric, best_epoch=epoch, bad_evals=0, best_valid=valid)
                        self.run.save_state(f"best_{stage}.pt", {"model": self.model.state_dict(), "epoch": epoch})
                    else:
                        state["bad_evals"] += 1
                    record = {"stage": stage, "epoch": epoch, **{f"train_{k}": v for k, v in losses.items()},
                              "valid": valid, "train_seconds": train_s, "eval_seconds": eval_s,
                              "best": improved}
                    auc = self.weight_auc() if stage == CALIBRATE else None
                    if auc is not None:
                        record["weight_auc"] = auc
                    self.records.append(record)
                    self.run.write_metrics(self.records)
                    self.log(f"[{stage}] epoch {epoch:3d}  loss {losses['loss']:.4f}  "
                             f"valid {cfg.train.select_metric} {metric:.4f}"
                             f"{'  *' if improved else ''}  ({train_s:.1f}s + {eval_s:.1f}s eval)")
                if epoch % cfg.run.checkpoint_every == 0:
                    self._checkpoint(state, optimizer, rng)
            summary_stages[stage] = self._finish_stage(stage, state)
            next_index = state["stage_index"] + 1
            state.update(self._fresh_stage_state(next_index))
            state["stage_results"] = summary_stages
            if next_index < len(self.stages):
                self._start_stage(next_index)
                optimizer = self.new_optimizer()
            self._checkpoint(state, optimizer, rng)
        summary = self._write_outputs(summary_stages, time.time() - t_start)
        state["done"] = True
        self._checkpoint(state, optimizer, rng)
        return summary

    def _finish_stage(self, stage: str, state: dict[str, Any]) -> dict[str, Any]:
        """Restore the stage's best state and score the test split once."""
        if state["best_epoch"] == 0:
            raise RuntimeError(f"stage {stage} ran no evaluation (train.max_epochs={self.cfg.train.max_epochs}, "
                               f"train.eval_every={self.cfg.train.eval_every})")
        self.model.load_state_dict(self.run.load_state(f"best_{stage}.pt")["model"])
        test = self.evaluate(stage, TEST)
        result: dict[str, Any] = {"best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
                                  "valid": state["best_valid"], "test": test}
        auc = self.weight_auc() if stage == CALIBRATE else None
        if auc is not None:
            result["weight_auc"] = auc
        self.log(f"[{stage}] best epoch {state['best_epoch']}: valid {self.cfg.train.select_metric} "
                 f"{state['best_metric']:.4f}, test {test.get(self.cfg.train.select_metric, float('nan')):.4f}")
        return result

    def _write_outputs(self, stages: dict[str, Any], seconds: float) -> dict[str, Any]:
        final = stages[self.stages[-1]]
        summary: dict[str, Any] = {"valid": final["valid"], "test": final["test"], "variant": self.cfg.model.variant,
                                   "modalities": self.data.modalities, "stages": stages, "seconds": seconds}
        if "weight_auc" in final:
            summary["weight_auc"] = final["weight_auc"]
        weights = self.item_weight_table()
        if weights is not None and CALIBRATE in self.stages:
            self.run.write_item_weights(weights, self.data.modalities)
        self.run.write_json(SUMMARY, summary)
        if self.cfg.run.plots:
            from margo_dist.train.plots import write_plots

            write_plots(self.run, self.records, weights, self.data.modalities)
        return summary

    # -- checkpoints ------------------------------------------------------------------

    def _checkpoint(self, state: dict[str, Any], optimizer: torch.optim.Optimizer, rng: np.random.Generator) -> None:
        self.run.save_state(CHECKPOINT, {"state": state, "model": self.model.state_dict(),
                                         "optimizer": optimizer.state_dict(),
                                         "rng": rng.bit_generator.state, "records": self.records})

    def _resume(self) -> tuple[dict[str, Any], torch.optim.Optimizer, np.random.Generator]:
        rng = np.random.default_rng(self.cfg.train.seed)
        if self.cfg.run.resume and self.run.exists(CHECKPOINT):
            ckpt = self.run.load_state(CHECKPOINT)
            self.model.load_state_dict(ckpt["model"])
            optimizer = self.new_optimizer()
            optimizer.load_state_dict(ckpt["optimizer"])
            rng.bit_generator.state = ckpt["rng"]
            self.records = list(ckpt["records"])
            state = ckpt["state"]
            self.log(f"resuming {self.run.url}: stage {state['stage_index'] + 1}/{len(self.stages)}, "
                     f"epoch {state['epoch']}")
            return state, optimizer, rng
        self.run.write_config(self.cfg)
        if self.cfg.run.pretrained and self.stages[0] == PRETRAIN and len(self.stages) > 1:
            return self._from_pretrained(), self.new_optimizer(), rng
        self._start_stage(0)
        return self._fresh_stage_state(0), self.new_optimizer(), rng

    def _from_pretrained(self) -> dict[str, Any]:
        """Skip stage 1: take its best state (and its results) from another run's folder.

        Stage 2 hyper-parameters (alpha, tau, ...) can then be searched from one
        pretraining, as the paper's two-stage protocol allows.
        """
        other = RunDir(self.cfg.run.pretrained)
        name = f"best_{PRETRAIN}.pt"
        if not other.exists(name):
            raise MargoError(f"run.pretrained={self.cfg.run.pretrained}: {other.path(name)} does not exist")
        mine, theirs = self.cfg.model, other.load_config().model
        for key in ("dim", "n_layers", "hidden_mult"):
            if getattr(mine, key) != getattr(theirs, key):
                raise MargoError(f"run.pretrained={self.cfg.run.pretrained} has model.{key}={getattr(theirs, key)}, "
                                 f"this run has {getattr(mine, key)}")
        self.run.save_state(name, other.load_state(name))
        state = self._fresh_stage_state(1)
        if other.exists(SUMMARY):
            stage1 = other.read_json(SUMMARY).get("stages", {}).get(PRETRAIN)
            if stage1 is not None:
                state["stage_results"] = {PRETRAIN: stage1}
        self.records = [r for r in other.read_metrics() if r.get("stage") == PRETRAIN]
        self.log(f"stage {PRETRAIN} taken from {self.cfg.run.pretrained}")
        self._start_stage(1)
        return state


def train(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load the data for ``cfg`` and run every stage; returns the summary."""
    torch.manual_seed(cfg.train.seed)
    data = load_training_data(cfg)
    return Trainer(cfg, data, log).fit()
