"""MARGO on the DRAGON encoder, DRAGON's own fusion, and the ID-only baselines.

Every model here is a pure tensor-to-tensor module: the graph and the frozen
features come in as arguments of ``encode``; dense parameters are drawn from an
explicit ``torch.Generator`` and tables from their ``TableSpec``; nothing is cached
between calls. A ``RowPlacement`` (``model/placement.py``) says which table rows and
item features this worker holds (all of them in local mode).

``encode`` returns ``(U, I)`` with shapes [n_users, B, d] and [n_items, B, d]: one
d-dim slice per modality (B = M), or a single slice (B = 1) for the ID baselines.
A fused score is ``y_ui = sum_b c_ub * c_ib * <U[u, b], I[i, b]>``, with the
coefficients given by the stage (``fusion_coefficients``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from margo_dist.config import ModelConfig
from margo_dist.graph.tensors import Batch, ComputeGraph, EdgeList
from margo_dist.model.layers import MLP, propagate, residual_add
from margo_dist.model.placement import ITEM, NODE, USER, LocalPlacement, RowPlacement
from margo_dist.model.tables import Lookup, Table, TableSpec

from margo_dist.variants import CALIBRATE, DRAGON, PRETRAIN, get_variant

__all__ = ["CALIBRATE", "DRAGON", "PRETRAIN", "Recommender", "block_ratings", "build_model", "fuse",
           "modality_ratings"]


class Projections(nn.ModuleList):
    """The per-modality item projections ``MLP_m`` (Eq. 1): the dense part every worker holds whole.

    One call projects every modality, narrowest first: autograd runs the projection made
    last first, so the widest one's weight gradient (most of the dense bytes) is complete
    while the others are still back-propagated, and its sum over the workers travels
    meanwhile.
    """

    def __init__(self, mlps: list[MLP]) -> None:
        super().__init__(mlps)
        self.order = sorted(range(len(mlps)), key=lambda k: mlps[k].w1.shape[1])

    def forward(self, features: list[Tensor], rows: Tensor | None = None) -> list[Tensor]:
        """``features[m]`` (or its ``rows``) projected by ``MLP_m``, [n, d] per modality, in modality order."""
        projected = {k: self[k](features[k] if rows is None else features[k].index_select(0, rows))
                     for k in self.order}
        return [projected[k] for k in range(len(self))]


class DragonEncoder(nn.Module):
    """DRAGON's graph encoder over M modalities (docs/equations.md section 1).

    Per modality: item input ``MLP_m(f_i^m)``, user input a free table ``P^m``;
    rows L2-normalised; ``n_layers`` propagation steps on the bipartite graph summed
    with the input (``R = X + H1 + H2``); then one item-item and one user-user layer
    with residual. The modality slices never mix, so fusion stays late.
    """

    def __init__(self, n_users: int, n_items: int, feature_dims: list[int], cfg: ModelConfig,
                 generator: torch.Generator, table_seed: int, placement: RowPlacement,
                 compute_dtype: torch.dtype = torch.float32, missing_rows: bool = False) -> None:
        super().__init__()
        self.placement = placement
        self.n_users, self.n_items, self.dim = n_users, n_items, cfg.dim
        self.n_layers = cfg.n_layers
        self.n_slices = len(feature_dims)
        self.projections = Projections(
            [MLP(f, cfg.hidden_mult * cfg.dim, cfg.dim, generator, compute_dtype, missing_rows) for f in feature_dims])
        self.preferences = nn.ModuleList(
            [placement.table(TableSpec.xavier(f"preferences.{k}", n_users, cfg.dim, table_seed), USER)
             for k in range(len(feature_dims))])
        # how a step calls the projections: the module itself, or a wrapper of it that sums its
        # gradients over the workers (DDP, ``replicate_through``). Kept in a tuple, not as a
        # submodule, so the state dict has the same keys in local and distributed mode
        self._project: tuple[nn.Module] = (self.projections,)

    def replicate_through(self, wrapper: nn.Module) -> None:
        """Call the projections through ``wrapper`` (a module whose forward is theirs) from now on."""
        self._project = (wrapper,)

    def project(self, features: list[Tensor], rows: Tensor | None = None) -> list[Tensor]:
        """Every modality's projection of ``features`` (or of their ``rows``), [n, d] each: one call
        of the projections' module per step, as a DDP wrapper expects."""
        return self._project[0](features, rows)

    def user_inputs(self, users: Tensor) -> list[Tensor]:
        """Preference rows of ``users`` per modality: one lookup for every modality (distributed:
        one fetch from the owners, not one per table)."""
        if not self.placement.distributed:  # no tables side by side first (a copy of each, and back)
            return [t.own_rows().index_select(0, users) for t in self.preferences]
        own = torch.cat([t.own_rows() for t in self.preferences], dim=1)
        return list(self.placement.fetch(USER, own, users).split(self.dim, dim=1))

    def item_inputs(self, features: list[Tensor], items: Tensor) -> list[Tensor]:
        """Projected features of ``items`` per modality (sampled mode).

        Distributed: ``features`` are the raw rows this rank owns; each owner projects the
        items the ranks ask of it, once each, and sends the d-wide rows (the gradient comes
        back to its projection). Local: when a sampled graph needs most items, projecting
        every item and keeping the rows it needs costs about the same arithmetic and skips
        copying the raw feature rows (for 4096-d features, over 100 MB per step); the
        result is the same.
        """
        if self.placement.distributed:
            def project(local_rows: Tensor) -> Tensor:
                return torch.cat(self.project(features, local_rows.to(features[0].device)), dim=1)

            return list(self.placement.fetch_computed(ITEM, items, project).split(self.dim, dim=1))
        if 2 * items.numel() > self.n_items:
            return [p.index_select(0, items) for p in self.project(features)]
        return self.project(features, items)

    def input_rows(self, user_rows: list[Tensor], item_rows: list[Tensor]) -> Tensor:
        """``X``: users then items, each modality slice L2-normalised; [n_users + n_items, M*d]."""
        return torch.cat([_normalised(user_rows), _normalised(item_rows)])

    def whole_inputs(self, features: list[Tensor], by_columns: bool = False) -> Tensor:
        """``X`` of every node: each owner makes its own users' and items' rows, then they are gathered.

        ``features`` holds the raw rows this rank owns (all items in local mode): the
        dominant GEMM, the projection, and the normalisation are split over the ranks,
        and all-gathers move the M*d-wide rows (owner-computed projections), or with
        ``by_columns`` only this rank's block of their columns (``RowPlacement.columns``). The
        users' rows travel while this rank projects its items.
        """
        gather = self.placement.start_gather_columns if by_columns else self.placement.start_gather
        users = gather(USER, _normalised([t.own_rows() for t in self.preferences]))
        items = gather(ITEM, _normalised(self.project(features)))
        return torch.cat([users.wait(), items.wait()])

    def encode(self, graph: ComputeGraph, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Output users' and items' final vectors, [n_out_users, M, d] and [n_out_items, M, d]."""
        _check_steps(graph, self.n_layers)
        if graph.input_users is None:
            x = self.whole_inputs(features)
        else:
            x = self.input_rows(self.user_inputs(graph.input_users), self.item_inputs(features, graph.input_items))
        users, items = self.propagate_rows(x, graph)
        return users.view(-1, self.n_slices, self.dim), items.view(-1, self.n_slices, self.dim)

    def encode_columns(self, graph: ComputeGraph, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The whole graph's output users and items, this rank's columns of their flat M*d vectors
        (``placement.columns``): [n_out_users, c] and [n_out_items, c].

        Every step after the input rows is linear in each column and the modality slices
        never mix, so a rank that holds some columns of every input row propagates them
        exactly as the whole rows would be; at N ranks each propagates 1/N of the columns.
        """
        _check_steps(graph, self.n_layers)
        return self.propagate_rows(self.whole_inputs(features, by_columns=True), graph)

    @staticmethod
    def propagate_rows(x: Tensor, graph: ComputeGraph) -> tuple[Tensor, Tensor]:
        """Input rows [n_src, F] -> output users' and items' rows [., F]: ``n_layers`` bipartite steps
        summed with the input, then the item-item and user-user layers with residual."""
        r = propagate_bipartite(x, graph.bipartite)
        r_users, r_items = graph.split_mid(r)
        items = graph.item_item.select_dst(r_items) + propagate(r_items, graph.item_item)
        users = graph.user_user.select_dst(r_users) + propagate(r_users, graph.user_user)
        return users, items

    def regularised_rows(self, users: Tensor) -> list[tuple[Tensor, int]]:
        """The batch users' preference rows that DRAGON's regulariser penalises, one per triplet
        (``users`` are rows this worker holds)."""
        return [(t.lookup_own(users), 1) for t in self.preferences]


class IdEncoder(nn.Module):
    """ID-embedding baselines: LightGCN (``n_layers`` > 0, layer mean) or BPR-MF (0)."""

    def __init__(self, n_users: int, n_items: int, cfg: ModelConfig, n_layers: int, table_seed: int,
                 placement: RowPlacement) -> None:
        super().__init__()
        self.placement = placement
        self.n_users, self.n_items, self.dim, self.n_layers = n_users, n_items, cfg.dim, n_layers
        self.n_slices = 1
        self.embedding = placement.table(TableSpec.xavier("embedding", n_users + n_items, cfg.dim, table_seed), NODE)

    def encode(self, graph: ComputeGraph, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """LightGCN: the mean of layers 0..K; no homogeneous layer (its edges are unused)."""
        _check_steps(graph, self.n_layers)
        if graph.input_users is None:
            x = self.embedding.all_rows()
        else:
            x = torch.cat([self.embedding.lookup(graph.input_users), self.embedding.lookup(graph.input_items + self.n_users)])
        users, items = self.propagate_rows(x, graph)
        return users.view(-1, 1, self.dim), items.view(-1, 1, self.dim)

    def encode_columns(self, graph: ComputeGraph, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """As ``DragonEncoder.encode_columns``: this rank's columns of the output rows, [., c] each."""
        _check_steps(graph, self.n_layers)
        return self.propagate_rows(self.placement.start_gather_columns(NODE, self.embedding.own_rows()).wait(), graph)

    def propagate_rows(self, x: Tensor, graph: ComputeGraph) -> tuple[Tensor, Tensor]:
        out_users, out_items = graph.split_mid(propagate_bipartite(x, graph.bipartite) / (self.n_layers + 1))
        return graph.user_user.select_dst(out_users), graph.item_item.select_dst(out_items)

    def regularised_rows(self, users: Tensor, items: Tensor) -> list[tuple[Tensor, int]]:
        """The batch's user rows (one per triplet) and item rows (positive and negative: two);
        rows this worker holds."""
        return [(self.embedding.lookup_own(users), 1), (self.embedding.lookup_own(items + self.n_users), 2)]


class Recommender(nn.Module):
    """An encoder plus the fusion weights: θ (items, MARGO) or user weights (DRAGON)."""

    def __init__(self, n_users: int, n_items: int, feature_dims: list[int], cfg: ModelConfig, seed: int,
                 placement: RowPlacement | None = None, compute_dtype: torch.dtype = torch.float32,
                 present: Tensor | None = None) -> None:
        super().__init__()
        if present is not None and tuple(present.shape) != (n_items, len(feature_dims)):
            raise ValueError(f"present has shape {tuple(present.shape)}, expected ({n_items}, {len(feature_dims)})")
        # [n_items, M] bool: which (item, modality) pairs have a feature; None: all. Every worker
        # holds all of it (one bit per pair); not in the state dict (the dataset says it)
        self.register_buffer("present", present, persistent=False)
        self._columns_checked = False  # the column split's premise, checked once (``forward``)
        # dense parameters from one generator (every worker draws the same); tables from
        # their TableSpec, whose rows depend only on (seed, table name, row)
        generator, table_seed = torch.Generator().manual_seed(seed), seed
        placement = placement or LocalPlacement(n_users, n_items)
        self.placement = placement
        self.spec = get_variant(cfg.variant)
        self.variant = cfg.variant
        self.fusion_scale = cfg.fusion_scale
        self.encoder: DragonEncoder | IdEncoder
        if self.spec.encoder == "dragon":
            if not feature_dims:
                raise ValueError(f"model.variant={cfg.variant} needs at least one modality")
            self.encoder = DragonEncoder(n_users, n_items, feature_dims, cfg, generator, table_seed, placement,
                                         compute_dtype, missing_rows=present is not None)
        else:
            n_layers = cfg.n_layers if self.spec.encoder == "lightgcn" else 0
            self.encoder = IdEncoder(n_users, n_items, cfg, n_layers, table_seed, placement)
        m = self.encoder.n_slices
        self.theta: Table | None = None
        self.user_weight: Table | None = None
        if self.spec.item_weights:
            self.theta = placement.table(TableSpec("theta", n_items, m, cfg.theta_init_std, table_seed), ITEM)
        if self.spec.user_weights:
            self.user_weight = placement.table(TableSpec.xavier("user_weight", n_users, m, table_seed), USER)

    @property
    def n_slices(self) -> int:
        return self.encoder.n_slices

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The model's parameters by kind, for the optimiser (and, distributed, for placement).

        ``dense``: the projection MLPs (replicated); ``tables``: the per-row embedding
        tables (user preferences, ID embeddings); ``weights``: the fusion-weight tables
        (θ, DRAGON's user weights), which ``train.weight_lr`` may give their own rate.
        """
        weights = [p for t in (self.theta, self.user_weight) if t is not None for p in t.parameters()]
        taken = {id(p) for p in weights}
        tables = [p for m in self.modules() if isinstance(m, Table) for p in m.parameters() if id(p) not in taken]
        taken |= {id(p) for p in tables}
        dense = [p for p in self.parameters() if id(p) not in taken]
        return {"dense": dense, "tables": tables, "weights": weights}

    def replicated(self) -> nn.Module | None:
        """The dense module every worker holds whole (the projections; None for the ID baselines),
        whose gradients are summed over the workers; the tables are sharded instead."""
        return self.encoder.projections if isinstance(self.encoder, DragonEncoder) else None

    def forward(self, batch: Batch, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The modality ratings ``r_ui^m`` (Eq. 2) of the batch's positives and negatives, [B, M] each.

        ``features``: the raw feature rows this worker holds (``placement``). On the whole
        graph every worker propagates every node over its block of columns
        (``encode_columns``) and the blocks' ratings are summed over the workers, so each
        worker has every triplet's ratings (local mode: one block of every column). On
        sampled blocks the batch's users are encoded here and each item's vectors come from
        the worker that encoded it (``item_vectors``).
        """
        if batch.graph.input_users is None:
            assert batch.pos_local is not None and batch.neg_local is not None
            if not self._columns_checked:
                check_column_linear(lambda x: self.encoder.propagate_rows(x, batch.graph),
                                    self.encoder.n_users + self.encoder.n_items, batch.graph.item_item.src.device,
                                    type(self.encoder).__name__)
                self._columns_checked = True
            users_c, items_c = self.encode_columns(batch.graph, features)
            start, dim, m = self.columns()[0], self.encoder.dim, self.n_slices
            eu = users_c.index_select(0, batch.users_local)
            ratings = self.placement.summed(torch.stack([
                block_ratings(eu, items_c.index_select(0, batch.pos_local), start, dim, m),
                block_ratings(eu, items_c.index_select(0, batch.neg_local), start, dim, m)]))
            return ratings[0], ratings[1]
        users_emb, items_emb = self.encode(batch.graph, features)
        pos_emb, neg_emb = self.item_vectors(items_emb, batch)
        eu = users_emb.index_select(0, batch.users_local)
        return modality_ratings(eu, pos_emb), modality_ratings(eu, neg_emb)

    def item_vectors(self, items_emb: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """The final vectors of a sampled batch's positives and negatives, [B, M, d] each.

        Rows rather than advanced indexing: the backward of ``index_select`` sums duplicate
        rows in a fixed order, so runs repeat bit for bit on a multi-threaded CPU. When the
        compute graph's output items are the step's items this worker owns
        (``Batch.pos_local`` is None, distributed sampled mode) it encodes them for every
        worker whose triplets hold them, and each triplet's rows come from the item's owner
        (an all-to-all whose gradient returns to the owner).
        """
        if batch.pos_local is not None and batch.neg_local is not None:
            return items_emb.index_select(0, batch.pos_local), items_emb.index_select(0, batch.neg_local)
        out_items = batch.graph.output_items
        assert out_items is not None
        flat = items_emb.flatten(1)
        own_local = self.placement.local_index(ITEM).index_select(0, out_items.cpu()).to(flat.device)

        def encoded(local_rows: Tensor) -> Tensor:
            local_rows = local_rows.to(own_local.device)  # the owners' requests arrive on the host
            where = torch.searchsorted(own_local, local_rows).clamp(max=max(own_local.numel() - 1, 0))
            if local_rows.numel() and (own_local.numel() == 0 or bool((own_local[where] != local_rows).any())):
                raise RuntimeError(f"rank {self.placement.rank} was asked for the vectors of items it did "
                                   "not encode this step (a batch whose output items are not the step's items it owns)")
            return flat.index_select(0, where)

        rows = self.placement.fetch_computed(ITEM, torch.cat([batch.pos, batch.neg]), encoded, tally=False)
        n = batch.pos.numel()
        return tuple(rows.view(-1, *items_emb.shape[1:]).split([n, n]))  # type: ignore[return-value]

    def encode(self, graph: ComputeGraph, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Final vectors of the compute graph's output users and items, [., M, d] each."""
        return self.encoder.encode(graph, features)

    def encode_columns(self, graph: ComputeGraph, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """This rank's columns of the whole graph's output vectors, flat: [., c] each (``columns``)."""
        if graph.input_users is not None:
            raise ValueError("encode_columns needs the whole-graph compute graph (a sampled one has no "
                             "input rows for every node)")
        return self.encoder.encode_columns(graph, features)

    def columns(self) -> tuple[int, int]:
        """[start, stop) of this rank's block of the flat M*d vector's columns."""
        bounds = self.encoder.placement.columns(self.n_slices * self.encoder.dim)
        rank = self.encoder.placement.rank
        return bounds[rank], bounds[rank + 1]

    def item_weights(self, items: Tensor | None = None) -> Tensor:
        """``w_i = softmax(θ_i)`` (Eq. 3), [len(items) or n_items, M]."""
        if self.theta is None:
            raise RuntimeError(f"variant {self.variant} has no item weight table")
        rows = self.theta.all_rows() if items is None else self.theta.lookup(items)
        return self._masked_softmax(rows, items)

    def start_item_weights(self, items: Tensor) -> Lookup:
        """``item_weights(items)`` begun now: θ's rows travel while the caller encodes (and their
        gradient while the backward runs on); ``wait()`` returns the weights."""
        if self.theta is None:
            raise RuntimeError(f"variant {self.variant} has no item weight table")
        rows = self.theta.start_lookup(items)
        return Lookup(finish=lambda: self._masked_softmax(rows.wait(), items))

    def _masked_softmax(self, logits: Tensor, items: Tensor | None) -> Tensor:
        """softmax over each item's present modalities: a missing pair's weight is exactly 0."""
        present = self.present_rows(items)
        if present is not None:
            logits = logits.masked_fill(~present, float("-inf"))
        return torch.softmax(logits, dim=1)

    def present_rows(self, items: Tensor | None) -> Tensor | None:
        """[len(items) or n_items, M] bool presence of ``items`` (all items when None); None: all present."""
        if self.present is None:
            return None
        return self.present if items is None else self.present.index_select(0, items)

    def _presence_gate(self, items: Tensor | None) -> Tensor | None:
        """1 where an item has the modality, 0 where it has not (a missing pair adds nothing to
        the sum of the modalities' scores); None when every pair is there."""
        present = self.present_rows(items)
        return None if present is None else present.to(torch.float32)

    def present_pairs(self, pos: Tensor | None, neg: Tensor | None) -> Tensor | None:
        """[B, M] bool: the modalities both items of each (positive, negative) pair have; None: all."""
        if self.present is None or pos is None or neg is None:
            return None
        return self.present.index_select(0, pos) & self.present.index_select(0, neg)

    def user_weights(self, users: Tensor | None = None) -> Tensor:
        """DRAGON's user-level modality weights, softmax over modalities."""
        if self.user_weight is None:
            raise RuntimeError(f"variant {self.variant} has no user weight table")
        rows = self.user_weight.all_rows() if users is None else self.user_weight.lookup(users)
        return torch.softmax(rows, dim=1)

    def scale(self) -> float:
        """Fused-score multiplier of the calibration stage (``model.fusion_scale``)."""
        return float(self.n_slices) if self.fusion_scale == "num_modalities" else 1.0

    def fusion_coefficients(self, stage: str, users: Tensor | None, items: Tensor | None,
                            item_weights: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """(user coef [., M] or None, item coef [., M] or None) for ``stage``; None means 1.

        ``item_weights``: ``self.item_weights(items)`` when the caller has it already.
        """
        if stage == PRETRAIN:
            return None, self._presence_gate(items)
        if stage == CALIBRATE:  # θ's softmax is 0 at missing pairs already
            return None, (self.item_weights(items) if item_weights is None else item_weights) * self.scale()
        if stage == DRAGON:
            return self.user_weights(users), self._presence_gate(items)
        raise ValueError(f"unknown stage {stage!r}")

    def score_vectors(self, stage: str, users_emb: Tensor, items_emb: Tensor, users: Tensor | None = None,
                      items: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Flat vectors with ``<user_vec, item_vec> = y_ui``: [., M*d] each."""
        cu, ci = self.fusion_coefficients(stage, users, items)
        if cu is not None:
            users_emb = users_emb * cu.unsqueeze(2)
        if ci is not None:
            items_emb = items_emb * ci.unsqueeze(2)
        return users_emb.flatten(1), items_emb.flatten(1)

    def regularised_rows(self, users: Tensor, items: Tensor) -> list[tuple[Tensor, int]]:
        """Rows for the λ-regulariser, each with its rows per triplet: DRAGON's batch-user
        preferences; user and item IDs (``items``: positives then negatives) for the
        baselines. Every id must be a row this worker holds (all of them in local mode)."""
        if isinstance(self.encoder, IdEncoder):
            return self.encoder.regularised_rows(users, items)
        return self.encoder.regularised_rows(users)


def _check_steps(graph: ComputeGraph, n_layers: int) -> None:
    if len(graph.bipartite) != n_layers:
        raise ValueError(f"compute graph has {len(graph.bipartite)} propagation steps, the model {n_layers}")


def _normalised(slices: list[Tensor]) -> Tensor:
    """Modality slices [n, d] each, L2-normalised per row, side by side: [n, M*d]."""
    return torch.cat([nn.functional.normalize(x, p=2, dim=1) for x in slices], dim=1)


def propagate_bipartite(x: Tensor, edges: list[EdgeList]) -> Tensor:
    """``R = X + sum_l H_l`` with ``H_l = A_hat H_{l-1}``, one edge list per step.

    x: [n_src of the first step, F]; returns [n_dst of the last step, F].
    """
    out, h = x, x
    for e in edges:
        h = propagate(h, e)
        out = residual_add(out, h, e)
    return out


def check_column_linear(propagate: Callable[[Tensor], tuple[Tensor, Tensor]], n_rows: int,
                        device: torch.device, name: str) -> None:
    """The column split's premise, checked on the graph it will run on: ``propagate`` (input rows
    [n_rows, F] -> output users' and items' rows [., F]) must be linear and keep each column to
    itself, so that workers that each propagate a block of columns get the whole rows' columns.

    Random rows of width 3 from a fixed seed (no global RNG): column 0 of ``propagate(X)`` must
    equal ``propagate(X[:, :1])``, and ``propagate(2X + Y)`` must equal ``2 propagate(X) +
    propagate(Y)``, to float32 rounding. Raises ``ValueError`` naming ``name`` otherwise.
    """
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.randn(n_rows, 3, generator=generator).to(device) for _ in range(2))

    def run(rows: Tensor) -> Tensor:
        return torch.cat(propagate(rows.contiguous()))

    with torch.no_grad():
        whole = run(x)
        checks = {"column 0 alone": (run(x[:, :1]), whole[:, :1]),
                  "2X + Y": (run(2 * x + y), 2 * whole + run(y))}
    for what, (got, expected) in checks.items():
        scale = float(expected.abs().max()) if expected.numel() else 0.0
        if not torch.allclose(got.float(), expected.float(), rtol=1e-4, atol=1e-5 * max(scale, 1.0)):
            raise ValueError(f"{name}'s propagation is not linear per column ({what} differs by "
                             f"{float((got - expected).abs().max()):.3g}): train.mode=full splits the "
                             f"columns over the workers and needs it; use train.mode=sampled for this encoder")


def modality_ratings(eu: Tensor, ei: Tensor) -> Tensor:
    """``r_ui^m = <e_u^m, e_i^m>`` (Eq. 2): [B, M, d] x [B, M, d] -> [B, M]."""
    return (eu * ei).sum(dim=2)


def block_ratings(eu: Tensor, ei: Tensor, start: int, dim: int, n_slices: int) -> Tensor:
    """This block of columns' share of ``r_ui^m``: [B, c] x [B, c] -> [B, M].

    The block holds columns ``start .. start + c`` of the flat [M*d] vectors; the shares
    of all blocks sum to ``modality_ratings`` (zero for a modality outside the block). A
    block of whole slices sums them as ``modality_ratings`` does, in the same order.
    """
    prod = eu * ei
    b, c = prod.shape
    stop = start + c
    if start % dim == 0 and stop % dim == 0:
        inside = prod.view(b, c // dim, dim).sum(dim=2)
        return torch.cat([prod.new_zeros(b, start // dim), inside, prod.new_zeros(b, n_slices - stop // dim)], dim=1)
    pieces = []
    for m in range(n_slices):
        lo, hi = max(start, m * dim), min(stop, (m + 1) * dim)
        pieces.append(prod[:, lo - start: hi - start].sum(dim=1) if lo < hi else prod.new_zeros(b))
    return torch.stack(pieces, dim=1)


def fuse(r: Tensor, user_coef: Tensor | None, item_coef: Tensor | None) -> Tensor:
    """``y = sum_m c_u^m c_i^m r^m`` (Eq. 3 for item weights): [B, M] -> [B]."""
    if user_coef is not None:
        r = r * user_coef
    if item_coef is not None:
        r = r * item_coef
    return r.sum(dim=1)


def build_model(n_users: int, n_items: int, feature_dims: list[int], cfg: ModelConfig, seed: int,
                placement: RowPlacement | None = None, compute_dtype: torch.dtype = torch.float32,
                present: Tensor | None = None) -> Recommender:
    """A model whose initial parameters depend only on ``seed``; ``placement`` (default: one
    process owns every row) says which table rows and item features this rank holds;
    ``compute_dtype`` is the projection MLPs' (bfloat16: autocast, ``layers.MLP``); ``present``
    [n_items, M] bool marks the (item, modality) pairs that have a feature (None: all)."""
    return Recommender(n_users, n_items, feature_dims, cfg, seed, placement, compute_dtype, present)
