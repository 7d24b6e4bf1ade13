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
from margo_dist.dist.comm import Communicator, LocalComm
from margo_dist.dist.gradients import GradientSum
from margo_dist.dist.sharding import ITEM, USER, Placement, ShardedTable
from margo_dist.errors import MargoError
from margo_dist.graph.tensors import Batch, FullGraph, full_graph
from margo_dist.model.margo import Recommender, block_ratings, build_model
from margo_dist.model.objective import LossParts, ratings_loss, triplet_loss
from margo_dist.variants import CALIBRATE, PRETRAIN, get_variant
from margo_dist.precision import dtype_of
from margo_dist.precision import resolve as resolve_precision
from margo_dist.progress import progress_bar
from margo_dist.train import checkpoint
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
    many: it then holds only the table rows and item features it owns (``placement``,
    the owner rule), trains on its part of every step's triplets and evaluates its part
    of the users; with the defaults (one process owns everything) it is local mode, the
    same code. Only the leader writes the run folder or logs.
    """

    def __init__(self, cfg: Config, data: TrainingData, log: Callable[[str], None] = print,
                 comm: Communicator | None = None, placement: Placement | None = None,
                 coordinator: "Coordinator | RemoteCoordinator | None" = None,
                 on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        self.cfg = cfg
        self.data = data
        self.comm = comm or LocalComm()
        self.placement = placement or Placement.single(data.ds.n_users, data.ds.n_items)
        if self.comm.world_size > 1 and self.placement.comm is not self.comm:
            raise ValueError(f"a world of {self.comm.world_size} workers needs a Placement built on its communicator "
                             "(the owner rule): without one every worker would train alone")
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
                                              self.placement, dtype_of(precision), present).to(self.device)
        self.whole_graph = data.graph.to(self.device).compute_graph(self.model.encoder.n_layers)
        self.features = [f.to(self.device) for f in self._own_feature_rows(data)]
        self.dense_params = self.model.parameter_groups()["dense"]
        self.dense_sum: GradientSum | None = None
        if self.placement.distributed:
            order = self.model.dense_gradient_order()
            if {id(p) for p in order} != {id(p) for p in self.dense_params} or len(order) != len(self.dense_params):
                raise RuntimeError(f"model {cfg.model.variant}: dense_gradient_order lists {len(order)} parameters, "
                                   f"not its {len(self.dense_params)} dense ones")
            self.dense_sum = GradientSum(self.comm, order)
        self.user_owner = self.placement.spaces[USER].owner
        self.item_owner = self.placement.spaces[ITEM].owner
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

    def _own_feature_rows(self, data: TrainingData) -> list[Tensor]:
        """The raw-feature rows of the items this worker owns (all of them in local mode)."""
        owned = self.placement.owned(ITEM) if self.placement.distributed else torch.arange(data.ds.n_items)
        if data.feature_ids is None:
            return [f if not self.placement.distributed else f.index_select(0, owned) for f in data.features]
        if not torch.equal(data.feature_ids, owned):
            raise ValueError(f"the data holds the feature rows of {data.feature_ids.numel()} items, not the "
                             f"{owned.numel()} this worker owns (a shard of another owner array?)")
        return list(data.features)

    # -- evaluation -------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, stage: str, split: int) -> dict[str, float]:
        """Full ranking of ``split`` with embeddings recomputed now (never cached)."""
        self.model.eval()
        users_emb, items_emb = self.model.encode(self.whole_graph, self.features)
        uvec, ivec = self.model.score_vectors(stage, users_emb, items_emb)
        if not self.data.graph_complete:  # a receptive field: exact at this worker's own items
            ivec = self.placement.gather(ITEM, ivec.index_select(0, self.placement.owned(ITEM).to(ivec.device)))
        ivec_t = ivec.t().contiguous()

        def score(ids: Tensor) -> Tensor:
            return uvec[ids.to(self.device)] @ ivec_t

        self.model.train()
        users = self.data.eval_users(split)
        if self.placement.distributed:  # each worker ranks the users it owns
            users = users[self.user_owner[users] == self.comm.rank]
        sums, counted = full_ranking_sums(score, users, self.data.train_csr, self.data.heldout[split],
                                          self.cfg.train.topk, self.cfg.train.eval_user_chunk, fresh_scores=True)
        names = list(sums)  # the same order on every worker
        totals = self.comm.all_reduce_(torch.tensor([sums[k] for k in names] + [float(counted)],
                                                    dtype=torch.float64))
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

        Rows are gathered with ``index_select``: the backward of advanced indexing
        (``index_put_`` with accumulate) sums duplicate rows in an order that varies
        from process to process on a multi-threaded CPU, so runs would not repeat bit for bit.
        """
        b = batch.to(self.device)
        if b.graph.input_users is None:
            parts = self._whole_graph_loss(stage, b)
        else:
            users_emb, items_emb = self.model.encode(b.graph, self.features)
            pos_emb, neg_emb = self.item_vectors(items_emb, b)
            parts = triplet_loss(self.model, stage, self.cfg.model, users_emb.index_select(0, b.users_local),
                                 pos_emb, neg_emb, b.users, b.pos, b.neg, b.step_size or None, b.regularised())
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        parts.step_loss = self._sum_dense_gradients(parts.total.detach())
        optimizer.step()
        return parts

    def _whole_graph_loss(self, stage: str, b: Batch) -> LossParts:
        """This worker's part of a whole-graph step's loss (``b``: the whole step's triplets).

        Each worker propagates every node over its block of columns (``encode_columns``) and
        rates every triplet of the step with them; the blocks' ratings are summed over the
        workers, and worker r's loss takes triplets r, r + N, ... (local mode: one block of
        every column, and every triplet).
        """
        mine = slice(self.comm.rank, None, self.comm.world_size)
        weights = None  # θ's rows of this worker's triplets travel while the step encodes
        if stage == CALIBRATE and self.model.theta is not None:
            weights = self.model.start_item_weights(torch.cat([b.pos[mine], b.neg[mine]]))
        users_c, items_c = self.model.encode_columns(b.graph, self.features)
        start, dim, m = self.model.columns()[0], self.model.encoder.dim, self.model.n_slices
        eu = users_c.index_select(0, b.users_local)
        assert b.pos_local is not None and b.neg_local is not None
        ratings = self.comm.summed(torch.stack([block_ratings(eu, items_c.index_select(0, b.pos_local), start, dim, m),
                                                block_ratings(eu, items_c.index_select(0, b.neg_local), start, dim, m)]))
        return ratings_loss(self.model, stage, self.cfg.model, ratings[0, mine], ratings[1, mine], b.users[mine],
                            b.pos[mine], b.neg[mine], b.users.numel(), b.regularised(),
                            None if weights is None else weights.wait())

    def item_vectors(self, items_emb: Tensor, b: Batch) -> tuple[Tensor, Tensor]:
        """The final vectors of the batch's positives and negatives, [B, M, d] each.

        In sampled mode the compute graph's output items are the step's items this worker
        owns (``Batch.pos_local`` is None): it encodes them for every worker whose triplets
        hold them, and each triplet's rows come from the item's owner (an all-to-all whose
        gradient returns to the owner). A worker's blocks then start from its own users and
        items, whatever items the uniform negatives name.
        """
        if b.pos_local is not None and b.neg_local is not None:
            return items_emb.index_select(0, b.pos_local), items_emb.index_select(0, b.neg_local)
        out_items = b.graph.output_items
        assert out_items is not None
        flat = items_emb.flatten(1)
        own_local = self.placement.spaces[ITEM].local_index.index_select(0, out_items.cpu()).to(flat.device)

        def encoded(local_rows: Tensor) -> Tensor:
            local_rows = local_rows.to(own_local.device)  # the owners' requests arrive on the host
            where = torch.searchsorted(own_local, local_rows).clamp(max=max(own_local.numel() - 1, 0))
            if local_rows.numel() and (own_local.numel() == 0 or bool((own_local[where] != local_rows).any())):
                raise RuntimeError(f"rank {self.comm.rank} was asked for the vectors of items it did not encode "
                                   "this step (a batch whose output items are not the step's items it owns)")
            return flat.index_select(0, where)

        rows = self.placement.fetch_computed(ITEM, torch.cat([b.pos, b.neg]), encoded, tally=False)
        n = b.pos.numel()
        return tuple(rows.view(-1, *items_emb.shape[1:]).split([n, n]))  # type: ignore[return-value]

    def _sum_dense_gradients(self, loss: Tensor) -> float:
        """Replicated (dense) parameters: every worker's loss part is a share of the step's
        loss, so the step's gradient is the sum over workers; the sums started during the
        backward (``GradientSum``) and are finished here. Table rows need nothing: their
        gradients reached their owners through the gather.

        ``loss`` (this worker's part) rides in the last all-reduce, so the step's loss, which
        every worker checks, costs no collective (and no wait for the slowest worker) of its
        own; returns it."""
        if self.dense_sum is None:
            return float(loss)
        return self.dense_sum.finish(loss)

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
        totals = self.comm.all_reduce_(torch.tensor([sums[k] for k in names], dtype=torch.float64))
        means = {k: float(v) / max(n, 1) for k, v in zip(names, totals.tolist())}
        return {"loss": sums["loss"] / max(n, 1), **means}

    def batches(self, rng: np.random.Generator) -> Iterator[Batch]:
        """One epoch of batches: on the whole graph, or with sampled blocks."""
        if self.neighbour_sampler is None:
            rank, world = self.comm.rank, self.comm.world_size
            for u, i, j in self.triplets.epoch(rng):
                # every worker draws the same step and encodes all of its nodes (over its block of
                # columns, ``_whole_graph_loss``) ...
                batch = Batch.full(self.whole_graph, *(torch.from_numpy(a) for a in (u, i, j)))
                if world > 1:  # ... and regularises the step's rows it owns, with no rows to fetch
                    self._own_regularised(batch, u, i, j)
                yield batch
            return
        from margo_dist.graph.sample import sampled_batches

        triplets = list(self.triplets.epoch(rng))
        seed = int(rng.integers(0, 2**31 - 1))  # skip_epochs draws what this branch draws
        rank, world = self.comm.rank, self.comm.world_size
        # every worker draws the same steps; worker r takes the triplets whose user it owns and
        # encodes the step's items it owns (``item_vectors``), so its blocks start from its
        # own nodes; the regulariser reads the step's rows it owns
        shares = []
        for u, i, j in triplets:
            mine = self.user_owner[u] == rank
            items = np.unique(np.concatenate([i, j]))
            shares.append((u[mine], i[mine], j[mine], items[self.item_owner[items] == rank]))
        for (u, i, j), batch in zip(triplets, sampled_batches(self.neighbour_sampler, shares, seed,
                                                               self.cfg.sampler.num_workers)):
            if world > 1:
                batch.step_size = u.size
                self._own_regularised(batch, u, i, j)
            yield batch

    def _own_regularised(self, batch: Batch, u: np.ndarray, i: np.ndarray, j: np.ndarray) -> None:
        """Set the rows of the whole step (u, i, j) that this worker owns as the batch's
        regularised rows: the workers' terms add up to the step's."""
        rank, items = self.comm.rank, np.concatenate([i, j])
        batch.reg_users = torch.from_numpy(u[self.user_owner[u] == rank])
        batch.reg_items = torch.from_numpy(items[self.item_owner[items] == rank])

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
        return self._convert_model(self.model.state_dict(), ShardedTable.whole)

    def load_model_state(self, state: dict[str, Tensor]) -> None:
        """Load a whole-table state (``model_state``): each worker keeps the rows it owns."""
        self.model.load_state_dict(self._convert_model(state, ShardedTable.own))

    def _convert_model(self, state: dict[str, Tensor], convert: Callable[[ShardedTable, Tensor], Tensor]
                       ) -> dict[str, Tensor]:
        """``state`` with each sharded table's weight passed through ``convert`` (whole <-> own rows)."""
        if not self.placement.distributed:
            return state
        state = dict(state)
        for name, module in self.model.named_modules():
            if isinstance(module, ShardedTable):
                state[f"{name}.weight"] = convert(module, state[f"{name}.weight"])
        return state

    def _save(self, name: str, state: dict[str, Any]) -> None:
        """The leader writes; everyone waits for the file to be there."""
        if self.comm.is_leader:
            self.run.save_state(name, state)
        self.comm.barrier()

    def _checkpoint(self, optimizer: torch.optim.Optimizer, rng: np.random.Generator) -> None:
        """Every worker writes its table rows, then the leader commits the rest (``train/checkpoint.py``):
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
                     f"epoch {coord.progress.epoch} (written by {ckpt['world_size']} worker(s), "
                     f"read by {self.comm.world_size})")
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
