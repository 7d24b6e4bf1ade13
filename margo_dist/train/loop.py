"""One training loop for every variant: stages, early stopping, checkpoints, outputs.

Stage 1 (pretrain, sum fusion) runs to early stop on validation Recall@20; stage 2
(calibrate) starts from the best stage-1 state with a fresh θ and runs to early
stop. The test split is scored once per stage, after that stage's selection.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from margo_dist.config import Config
from margo_dist.data import io as mio
from margo_dist.data.dataset import TEST, TRAIN, VALID, Dataset
from margo_dist.data.prepare import ITEM_MAP, raw_id_array, read_id_map
from margo_dist.data.synth import dataset_url
from margo_dist.dist import checkpoint
from margo_dist.dist.comm import Communicator, LocalComm
from margo_dist.dist.step import StepPlan
from margo_dist.errors import MargoError
from margo_dist.graph.tensors import Batch, FullGraph, full_graph
from margo_dist.model.margo import Recommender, build_model
from margo_dist.model.placement import LocalPlacement, RowPlacement
from margo_dist.model.objective import LossParts, ratings_loss
from margo_dist.variants import CALIBRATE, PRETRAIN, get_variant
from margo_dist.precision import dtype_of
from margo_dist.precision import resolve as resolve_precision
from margo_dist.progress import progress_bar
from margo_dist.train.batches import TripletSampler
from margo_dist.train.coordinator import Coordinator, stages_of
from margo_dist.train.metrics import csr_from_pairs, full_ranking_sums, weight_detection_auc
from margo_dist.train.rundir import CHECKPOINT, SUMMARY, RunDir, identity_diff

if TYPE_CHECKING:
    from margo_dist.dist.coordination import RemoteCoordinator


@dataclass
class TrainingData:
    """Everything a run reads: the dataset, its graph tensors and the split indexes."""

    ds: Dataset
    url: str
    modalities: list[str]
    graph: FullGraph
    features: list[Tensor]  # per modality: the rows of ``feature_ids``, or of every item when None
    feature_ids: Tensor | None
    train_csr: tuple[np.ndarray, np.ndarray]
    heldout: dict[int, tuple[np.ndarray, np.ndarray]]
    truth: np.ndarray | None  # planted unreliable pairs of a synthetic dataset
    # False: ``graph`` is a shard's receptive field (graph/field.py), exact at its own nodes only
    graph_complete: bool = True
    # [n_items, M] bool: the (item, modality) pairs with a feature, under data.missing=mask when some
    # pair is missing; None: every pair is there (or data.missing=mean filled them)
    present: Tensor | None = None

    def eval_users(self, split: int) -> np.ndarray:
        indptr = self.heldout[split][0]
        return np.flatnonzero(np.diff(indptr) > 0)


def load_training_data(cfg: Config, build_graphs: bool = True, shard: tuple[str, int] | None = None
                       ) -> TrainingData:
    """Read and validate the dataset, load (or build once) its graph artefacts.

    ``shard`` (shard set URL, part) is a distributed worker's view: the interactions,
    the graph the shard set was made from (in sampled mode only the part's receptive
    field), and only the part's own feature rows, read from the shard set; the
    dataset's feature files are never opened, nor in sampled mode its graph artefacts.
    """
    from margo_dist.data.formats import read_dataset_cfg, read_interactions
    from margo_dist.graph.source import load_graph_by_key, load_graph_source

    url = dataset_url(cfg.data.path, cfg.train.progress)
    data_cfg = copy.copy(cfg.data)
    data_cfg.path = url
    modalities = list(cfg.data.modalities)
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(cfg.data.feature_dtype, torch.float32)
    feature_ids = None
    complete = True
    if shard is None:
        ds = read_dataset_cfg(data_cfg)
        graph_ds = _unmasked(ds, cfg.data.missing)
        art = load_graph_source(graph_ds, url, cfg.graph, modalities, build=build_graphs)
        rows = graph_ds.features
        graph = full_graph(art, modalities, cfg.graph.knn_mix)
    else:
        from margo_dist.graph.field import field_graph, load_field
        from margo_dist.graph.partition import load_feature_rows, read_shard_manifest

        man = read_shard_manifest(shard[0])
        ds = read_interactions(data_cfg, int(man["n_users"]), int(man["n_items"]))
        if cfg.train.mode == "sampled":
            graph = field_graph(load_field(shard[0], shard[1], modalities, cfg.model.n_layers), modalities,
                                cfg.graph.knn_mix)
            complete = False
        else:
            graph = full_graph(load_graph_by_key(url, cfg.graph, str(man["graph_key"]), modalities), modalities,
                               cfg.graph.knn_mix)
        ids, rows = load_feature_rows(shard[0], shard[1], modalities)
        feature_ids = torch.from_numpy(ids)
    present = np.stack([ds.presence(m) for m in modalities], axis=1) if modalities else None
    if present is not None and (present.all() or cfg.data.missing != "mask"):
        present = None
    features = [_feature_tensor(rows[m], dtype) for m in modalities]
    tu, ti = ds.split(TRAIN)
    heldout = {s: csr_from_pairs(*ds.split(s), ds.n_users) for s in (VALID, TEST)}
    return TrainingData(ds=ds, url=url, modalities=modalities, graph=graph, features=features,
                        feature_ids=feature_ids, train_csr=csr_from_pairs(tu, ti, ds.n_users), heldout=heldout,
                        truth=_load_truth(url, modalities), graph_complete=complete,
                        present=None if present is None else torch.from_numpy(present))


def _unmasked(ds: Dataset, missing: str) -> Dataset:
    """``ds`` as a dataset without presence records would be, for the comparison modes:
    data.missing=mean fills each missing row with its modality's mean row (MMRec's fill),
    zero keeps the zero rows; the kNN graphs are then built from those rows. mask: ``ds``."""
    if missing == "mask" or not ds.present:
        return ds
    features = dict(ds.features)
    for m, present in ds.present.items():
        if missing == "mean" and m in features and not present.all():
            rows = np.array(features[m], dtype=np.float32)
            rows[~present] = rows[present].mean(axis=0)
            features[m] = rows
    return dataclasses.replace(ds, features=features, present={})


def _feature_tensor(rows: np.ndarray, dtype: torch.dtype, chunk: int = 8192) -> Tensor:
    """``rows`` as a tensor of ``dtype``; a bfloat16 table is converted a block at a time from
    the (memory-mapped, read-only) float32 rows, so no whole float32 copy is made."""
    if dtype != torch.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(rows)).to(dtype)
    out = torch.empty(rows.shape, dtype=dtype)
    for start in range(0, rows.shape[0], chunk):
        out[start:start + chunk] = torch.from_numpy(np.array(rows[start:start + chunk], dtype=np.float32))
    return out


def _load_truth(url: str, modalities: list[str]) -> np.ndarray | None:
    from margo_dist.data.synth import META_FILE, load_truth

    if not mio.exists(mio.join(url, META_FILE)):
        return None
    names, truth = load_truth(url)
    if not set(modalities) <= set(names):
        return None
    return truth[:, [names.index(m) for m in modalities]]


class Trainer:
    """Runs the stages of ``cfg.model.variant`` on ``data``, writing to ``cfg.run.dir``.

    The :class:`Coordinator` decides what happens after each epoch and evaluation; the
    trainer runs epochs (``train_epoch``), evaluates (``evaluate``), checkpoints and
    writes the run folder's outputs. ``comm`` and ``placement`` make it one worker of
    many, and the trainer does not need to know which or how many: its step plan
    (``dist/step.py``) says which rows and triplets are this worker's and adds up what
    the workers computed; with the defaults (one process owns everything) it is local
    mode, the same code. Only the leader writes the run folder or logs.
    """

    def __init__(self, cfg: Config, data: TrainingData, log: Callable[[str], None] = print,
                 comm: Communicator | None = None, placement: RowPlacement | None = None,
                 coordinator: "Coordinator | RemoteCoordinator | None" = None,
                 on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        self.cfg = cfg
        self.data = data
        self.comm = comm or LocalComm()
        self.plan = StepPlan(self.comm, placement or LocalPlacement(data.ds.n_users, data.ds.n_items))
        self.log = log if self.comm.is_leader else (lambda _msg: None)
        if not data.graph_complete and cfg.train.mode != "sampled":
            raise ValueError(f"train.mode={cfg.train.mode} propagates over the whole graph; this worker holds "
                             "only its shard's receptive field (sampled mode's)")
        self.device = torch.device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self.run = RunDir(cfg.run.dir)
        self.variant = get_variant(cfg.model.variant)
        self.stages = stages_of(cfg)
        for line in self.variant.ignored_settings(cfg.model.alpha):
            self.log(f"warning: {line}")
        dims = [f.shape[1] for f in data.features] if self.variant.uses_features else []
        precision, why = resolve_precision(cfg.train.precision, self.device)
        if cfg.train.precision != "float32":
            self.log(f"projection precision: {precision} ({why})")
        cfg.train.precision = precision  # the run's config.yaml records what ran
        present = data.present if self.variant.uses_features else None
        self.model: Recommender = build_model(data.ds.n_users, data.ds.n_items, dims, cfg.model, cfg.train.seed,
                                              self.plan.placement, dtype_of(precision), present).to(self.device)
        self.whole_graph = data.graph.to(self.device).compute_graph(self.model.encoder.n_layers)
        own_rows = self.plan.own_feature_rows(data.features, data.feature_ids, data.ds.n_items)
        self.features = [f.to(self.device) for f in own_rows]
        self.plan.replicate(self.model)
        tu, ti = data.ds.split(TRAIN)
        self.triplets = TripletSampler(tu, ti, data.ds.n_items, cfg.train.batch_size)
        self.records: list[dict[str, Any]] = []
        self.neighbour_sampler = None
        if cfg.train.mode == "sampled":
            from margo_dist.graph.sample import BlockSampler

            self.neighbour_sampler = BlockSampler(data.graph, cfg.sampler.fanouts, self.model.encoder.n_layers)
        self.coordinator = coordinator or Coordinator(*Coordinator.arguments(cfg))
        self.on_checkpoint = on_checkpoint  # (seq, latest record) after each checkpoint, on every worker
        self.checkpoint_seq = 0

    # -- evaluation -------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, stage: str, split: int) -> dict[str, float]:
        """Full ranking of ``split`` with embeddings recomputed now (never cached)."""
        self.model.eval()
        users_emb, items_emb = self.model.encode(self.whole_graph, self.features)
        uvec, ivec = self.model.score_vectors(stage, users_emb, items_emb)
        if not self.data.graph_complete:  # a receptive field: exact at this worker's own items
            ivec = self.plan.whole_item_vectors(ivec)
        ivec_t = ivec.t().contiguous()

        def score(ids: Tensor) -> Tensor:
            return uvec[ids.to(self.device)] @ ivec_t

        self.model.train()
        users = self.plan.ranked_users(self.data.eval_users(split))
        sums, counted = full_ranking_sums(score, users, self.data.train_csr, self.data.heldout[split],
                                          self.cfg.train.topk, self.cfg.train.eval_user_chunk, fresh_scores=True)
        names = list(sums)  # the same order on every worker
        totals = self.plan.summed(torch.tensor([sums[k] for k in names] + [float(counted)], dtype=torch.float64))
        n = float(totals[-1])
        return {k: (float(v) / n if n > 0 else 0.0) for k, v in zip(names, totals[:-1].tolist())}

    def weight_auc(self) -> float | None:
        """Planted-noise detection AUC of the current item weights (synthetic data with θ only)."""
        if self.model.theta is None or self.data.truth is None:
            return None
        # scored on the pairs that have a feature, whatever data.missing did with the others
        present = torch.from_numpy(np.stack([self.data.ds.presence(m) for m in self.data.modalities], axis=1))
        return weight_detection_auc(self.model.item_weights().detach().float().cpu(), torch.from_numpy(self.data.truth),
                                    None if bool(present.all()) else present)

    @torch.no_grad()
    def item_weight_table(self) -> np.ndarray | None:
        if self.model.theta is None:
            return None
        return self.model.item_weights().float().cpu().numpy()

    # -- training ---------------------------------------------------------------------

    def train_step(self, stage: str, batch: Batch, optimizer: torch.optim.Optimizer) -> LossParts:
        """One optimiser step on one batch; embeddings are computed afresh for it.

        The model rates the batch's triplets; the loss takes this worker's share of them
        (``Batch.loss_rows``: all of them in local mode) with every mean over the whole
        step, so the workers' losses and gradients add up to the local step's.
        """
        b = batch.to(self.device)
        rows = b.loss_rows
        pos, neg = b.pos[rows], b.neg[rows]
        weights = None  # θ's rows of the share travel while the step encodes
        if stage == CALIBRATE and self.model.theta is not None:
            weights = self.model.start_item_weights(torch.cat([pos, neg]))
        r_pos, r_neg = self.model(b, self.features)
        parts = ratings_loss(self.model, stage, self.cfg.model, r_pos[rows], r_neg[rows], b.users[rows], pos, neg,
                             b.step_triplets, b.regularised(), None if weights is None else weights.wait())
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        parts.step_loss = self.plan.finish_backward(parts.total.detach())
        optimizer.step()
        return parts

    def train_epoch(self, stage: str, optimizer: torch.optim.Optimizer, rng: np.random.Generator,
                    desc: str) -> dict[str, float]:
        """One pass over the training pairs; returns the mean loss parts."""
        sums = {"loss": 0.0, "bpr": 0.0, "cal": 0.0, "reg": 0.0, "calibrated": 0.0}
        n = 0
        for batch in progress_bar(self.batches(rng), len(self.triplets), desc, self.cfg.train.progress, "batch"):
            parts = self.train_step(stage, batch, optimizer)
            # the step's loss, summed over the workers' parts: every worker sees the same value,
            # so a non-finite one stops all of them (not one, leaving the rest in a collective)
            loss = parts.step_loss
            if not np.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} in stage {stage} ({desc}); "
                                         f"bpr={parts.bpr} cal={parts.cal} reg={parts.reg}")
            for key, value in (("loss", loss), ("bpr", parts.bpr), ("cal", parts.cal), ("reg", parts.reg),
                               ("calibrated", parts.calibrated)):
                sums[key] += value
            n += 1
        # the loss is summed over the workers already; each worker's other parts are its shares
        names = ["bpr", "cal", "reg", "calibrated"]
        totals = self.plan.summed(torch.tensor([sums[k] for k in names], dtype=torch.float64))
        means = {k: float(v) / max(n, 1) for k, v in zip(names, totals.tolist())}
        return {"loss": sums["loss"] / max(n, 1), **means}

    def batches(self, rng: np.random.Generator) -> Iterator[Batch]:
        """One epoch of batches, this worker's part of each step: on the whole graph, or with
        sampled blocks (``StepPlan`` says which triplets and rows are this worker's)."""
        if self.neighbour_sampler is None:
            yield from self.plan.whole_graph_batches(self.whole_graph, self.triplets.epoch(rng))
            return
        from margo_dist.graph.sample import sampled_batches

        steps = list(self.triplets.epoch(rng))
        seed = int(rng.integers(0, 2**31 - 1))  # skip_epochs draws what this branch draws
        yield from self.plan.sampled_batches(steps, sampled_batches(self.neighbour_sampler,
                                                                    self.plan.sampled_shares(steps), seed,
                                                                    self.cfg.sampler.num_workers))

    def skip_epochs(self, rng: np.random.Generator, n: int) -> None:
        """Advance ``rng`` as ``n`` epochs of ``batches`` would, without building a batch."""
        for _ in range(n):
            for _ in self.triplets.epoch(rng):
                pass
            if self.neighbour_sampler is not None:
                rng.integers(0, 2**31 - 1)  # the epoch's sampling seed

    def new_optimizer(self) -> torch.optim.Optimizer:
        """Adam (fused: one kernel for every tensor, 5x faster than the default on CPU), one
        parameter group per kind the model declares; the fusion-weight tables get
        ``train.weight_lr`` when it is set."""
        groups = []
        for name, params in self.model.parameter_groups().items():
            if not params:
                continue
            group: dict[str, Any] = {"params": params, "name": name}
            if name == "weights" and self.cfg.train.weight_lr > 0:
                group["lr"] = self.cfg.train.weight_lr
            groups.append(group)
        return torch.optim.Adam(groups, lr=self.cfg.train.lr, fused=True)

    def _start_stage(self, stage_index: int) -> None:
        """Entering a stage: a later stage starts from the previous one's best state; calibration
        draws a fresh θ."""
        stage = self.stages[stage_index]
        if stage_index > 0:
            prev = self.stages[stage_index - 1]
            self.load_model_state(self.run.load_state(f"best_{prev}.pt")["model"])
        if stage == CALIBRATE and self.model.theta is not None:
            # 7919 (a prime) only separates this stream from the model's initial one (seed)
            self.model.theta.reset(self.cfg.model.theta_init_std, self.cfg.train.seed + 7919 * (stage_index + 1))

    def fit(self) -> dict[str, Any]:
        """Train every stage to early stop; write and return the summary."""
        cfg, coord = self.cfg, self.coordinator
        t_start = time.time()
        optimizer, rng = self._resume()
        # the leader looks at the run folder and tells the others, so all take the same branch
        if self.comm.broadcast_object(coord.done and self.run.exists(SUMMARY)):
            self.log(f"run {self.run.url} is already complete; summary.json holds its result")
            return self.run.read_json(SUMMARY)
        while not coord.done:
            stage = coord.stage
            if coord.wants_start_evaluation():
                self._validate(stage, 0, None, 0.0)
                self._checkpoint(optimizer, rng)
            while not coord.stage_over():
                epoch = coord.next_epoch()
                t0 = time.time()
                losses = self.train_epoch(stage, optimizer, rng, f"{stage} {epoch}/{cfg.train.max_epochs}")
                if coord.evaluates(epoch):
                    self._validate(stage, epoch, losses, time.time() - t0)
                if epoch % cfg.run.checkpoint_every == 0:
                    self._checkpoint(optimizer, rng)
            coord.finish_stage(self._finish_stage(stage))
            if not coord.done:
                self._start_stage(coord.stage_index)
                optimizer = self.new_optimizer()
            self._checkpoint(optimizer, rng)
        return self._write_outputs(time.time() - t_start)

    def _validate(self, stage: str, epoch: int, losses: dict[str, float] | None, train_s: float) -> None:
        """Validation after ``epoch`` (0: the stage's starting state): record it, keep the best state."""
        t1 = time.time()
        valid = self.evaluate(stage, VALID)
        eval_s = time.time() - t1
        metric = valid[self.cfg.train.select_metric]
        improved = self.coordinator.report(epoch, metric, valid)
        if improved:
            self._save(f"best_{stage}.pt", {"model": self.model_state(), "epoch": epoch})
        record: dict[str, Any] = {"stage": stage, "epoch": epoch}
        if losses is not None:
            record.update({f"train_{k}": v for k, v in losses.items()})
        record.update({"valid": valid, "train_seconds": train_s, "eval_seconds": eval_s, "best": improved})
        auc = self.weight_auc() if stage == CALIBRATE else None
        if auc is not None:
            record["weight_auc"] = auc
        self.records.append(record)
        if self.comm.is_leader:
            self.run.write_metrics(self.records)
        what = f"loss {losses['loss']:.4f}" if losses is not None else "start state"
        t = self.cfg.train
        bad_evals = self.coordinator.progress.bad_evals  # on every worker: a remote coordinator broadcasts it
        self.log(f"[{stage}] epoch {epoch:{len(str(t.max_epochs))}d}/{t.max_epochs}  {what}  valid {t.select_metric} "
                 f"{metric:.4f} {'*' if improved else ' '}  patience {bad_evals}/{t.patience}  "
                 f"({train_s:.1f}s + {eval_s:.1f}s eval)")

    def _finish_stage(self, stage: str) -> dict[str, Any]:
        """Restore the stage's best state and score the test split once."""
        self.coordinator.require_evaluation()
        progress = self.coordinator.progress
        self.load_model_state(self.run.load_state(f"best_{stage}.pt")["model"])
        test = self.evaluate(stage, TEST) if self.cfg.train.test_split else {}
        result: dict[str, Any] = {"best_epoch": progress.best_epoch, "epochs_run": progress.epoch,
                                  "valid": progress.best_valid, "test": test}
        auc = self.weight_auc() if stage == CALIBRATE else None
        if auc is not None:
            result["weight_auc"] = auc
        kept = " (its starting state: stage 2 did not beat it)" if progress.best_epoch == 0 else ""
        self.log(f"[{stage}] best epoch {progress.best_epoch}{kept}: valid {self.cfg.train.select_metric} "
                 f"{progress.best_metric:.4f}" + (f", test {test[self.cfg.train.select_metric]:.4f}" if test else
                                                  " (test split not read: train.test_split=false)"))
        return result

    def _write_outputs(self, seconds: float) -> dict[str, Any]:
        stages = self.coordinator.results
        final = stages[self.stages[-1]]
        summary: dict[str, Any] = {"valid": final["valid"], "test": final["test"], "best_epoch": final["best_epoch"],
                                   "variant": self.cfg.model.variant, "modalities": self.data.modalities,
                                   "stages": stages, "seconds": seconds}
        if "weight_auc" in final:
            summary["weight_auc"] = final["weight_auc"]
        weights = self.item_weight_table()
        if self.comm.is_leader:
            if weights is not None and CALIBRATE in self.stages:
                self.run.write_item_weights(weights, self.data.modalities, self._raw_items(len(weights)))
            self.run.write_json(SUMMARY, summary)
            if self.cfg.run.plots:
                from margo_dist.train.plots import write_plots

                present = None if self.data.present is None else self.data.present.cpu().numpy()
                write_plots(self.run, self.records, weights, self.data.modalities, self.data.truth,
                            self.cfg.train.select_metric, present)
        self.comm.barrier()
        return summary

    def _raw_items(self, n: int) -> np.ndarray | None:
        """The dataset's raw item ids by internal id, where it has an id map (prepared data)."""
        raw = read_id_map(dataset_url(self.cfg.data.path, progress=False), ITEM_MAP)
        return raw_id_array(raw, n) if raw else None

    # -- checkpoints ------------------------------------------------------------------

    def model_state(self) -> dict[str, Tensor]:
        """The model's state with every sharded table gathered whole (global row order), so a
        state written by N workers loads at any M and in local mode. Collective: every
        worker calls it at the same point."""
        return self.plan.whole_state(self.model)

    def load_model_state(self, state: dict[str, Tensor]) -> None:
        """Load a whole-table state (``model_state``): each worker keeps the rows it owns."""
        self.model.load_state_dict(self.plan.own_state(self.model, state))

    def _save(self, name: str, state: dict[str, Any]) -> None:
        """The leader writes; everyone waits for the file to be there."""
        if self.comm.is_leader:
            self.run.save_state(name, state)
        self.comm.barrier()

    def _checkpoint(self, optimizer: torch.optim.Optimizer, rng: np.random.Generator) -> None:
        """Every worker writes its table rows, then the leader commits the rest (``dist/checkpoint.py``):
        a kill at any point leaves the previous checkpoint whole, and N workers' checkpoint
        loads at any M. ``on_checkpoint`` (Ray Train's report) hears of each one."""
        self.checkpoint_seq += 1
        checkpoint.save(self.run, self.comm, self.model, optimizer,
                        {"coordinator": self.coordinator.state_dict(), "rng": rng.bit_generator.state,
                         "records": self.records}, self.checkpoint_seq)
        if self.on_checkpoint is not None:
            latest = dict(self.records[-1], epochs_trained=self.epochs_trained()) if self.records else {}
            self.on_checkpoint(self.checkpoint_seq, latest)

    def epochs_trained(self) -> int:
        """Training epochs this run has made: ``epochs_trained`` of its records."""
        return epochs_trained(self.records)

    def _resume(self) -> tuple[torch.optim.Optimizer, np.random.Generator]:
        rng = np.random.default_rng(self.cfg.train.seed)
        if self.comm.broadcast_object(self.cfg.run.resume and self.run.exists(CHECKPOINT)):
            record = checkpoint.read_record(self.run)
            if record["coordinator"]["done"] and self.run.exists(SUMMARY):
                # a finished run: nothing to load but where it stands (fit returns its summary)
                self.coordinator.load_state_dict(record["coordinator"])
                return self.new_optimizer(), rng
            optimizer = self.new_optimizer()
            ckpt = checkpoint.load(self.run, self.model, optimizer, record)
            self.coordinator.load_state_dict(ckpt["coordinator"])
            rng.bit_generator.state = ckpt["rng"]
            self.records = list(ckpt["records"])
            self.checkpoint_seq = int(ckpt["seq"])
            coord = self.coordinator
            self.log(f"resuming {self.run.url}: stage {coord.stage_index + 1}/{len(self.stages)}, "
                     f"epoch {coord.progress.epoch} ({checkpoint.provenance(ckpt, self.comm)})")
            return optimizer, rng
        if self.comm.is_leader:
            self.run.write_config(self.cfg)
        self.coordinator.reset()  # a hosted coordinator may hold the state of a failed attempt
        if self.cfg.run.pretrained and self.stages[0] == PRETRAIN and len(self.stages) > 1:
            self._from_pretrained(rng)
        else:
            self._start_stage(0)
        return self.new_optimizer(), rng

    def _from_pretrained(self, rng: np.random.Generator) -> None:
        """Skip stage 1: take its best state (and its results) from another run's folder.

        Stage 2 hyper-parameters (alpha, tau, ...) can then be searched from one
        pretraining, as the paper's two-stage protocol allows. ``rng`` is advanced by the
        epochs that stage 1 ran there, so stage 2 draws the batches it draws in a run of
        both stages with the same seed (the same result, tested).
        """
        other = RunDir(self.cfg.run.pretrained)
        name = f"best_{PRETRAIN}.pt"
        if not other.exists(name):
            raise MargoError(f"run.pretrained={self.cfg.run.pretrained}: {other.path(name)} does not exist")
        other_cfg = other.load_config()
        mine, theirs = self.cfg.model, other_cfg.model
        for key in ("dim", "n_layers", "hidden_mult"):
            if getattr(mine, key) != getattr(theirs, key):
                raise MargoError(f"run.pretrained={self.cfg.run.pretrained} has model.{key}={getattr(theirs, key)}, "
                                 f"this run has {getattr(mine, key)}")
        data_diff = identity_diff(other_cfg, self.cfg, "there", ("data.", "graph."))
        if data_diff:  # stage 1 learnt other data or another graph
            raise MargoError(f"run.pretrained={self.cfg.run.pretrained} was trained on other data ({data_diff})")
        if get_variant(theirs.variant).encoder != self.variant.encoder:
            raise MargoError(f"run.pretrained={self.cfg.run.pretrained} trained model.variant={theirs.variant} "
                             f"({get_variant(theirs.variant).encoder} encoder); this run's {self.variant.name} "
                             f"needs a {self.variant.encoder} encoder")
        self._save(name, other.load_state(name))
        stage1 = other.read_json(SUMMARY).get("stages", {}).get(PRETRAIN) if other.exists(SUMMARY) else None
        self.coordinator.skip_stage(stage1)
        if stage1 is not None and other_cfg.train.seed == self.cfg.train.seed:
            self.skip_epochs(rng, int(stage1["epochs_run"]))
        self.records = [dict(r, taken_from=self.cfg.run.pretrained) for r in other.read_metrics()
                        if r.get("stage") == PRETRAIN]
        self.log(f"stage {PRETRAIN} taken from {self.cfg.run.pretrained}")
        self._start_stage(1)


def epochs_trained(records: list[dict[str, Any]]) -> int:
    """Training epochs in a run's records, a stage taken from another run not counted:
    the clock of a search's early-stopping scheduler."""
    return sum(1 for r in records if r["epoch"] >= 1 and "taken_from" not in r)
