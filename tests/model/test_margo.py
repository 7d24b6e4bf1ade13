"""The DRAGON encoder against a dense-matrix reference, fusion, and stop-gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from margo_dist.config import ModelConfig
from margo_dist.errors import ConfigError
from margo_dist.graph.build import GraphArtifacts
from margo_dist.graph.tensors import Batch, full_graph
from margo_dist.model.margo import (CALIBRATE, DRAGON, PRETRAIN, block_ratings, build_model, check_column_linear,
                                    fuse, modality_ratings)
from margo_dist.variants import get_variant
from margo_dist.model.objective import calibration_term, ratings_loss

N_USERS, N_ITEMS = 4, 5
TRAIN = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (3, 0), (3, 4), (2, 1)]


def tiny_artifacts() -> GraphArtifacts:
    user = np.array([u for u, _ in TRAIN], dtype=np.int64)
    item = np.array([i for _, i in TRAIN], dtype=np.int64)
    knn_a = np.array([[1, 2], [0, 2], [1, 3], [4, 2], [3, 0]], dtype=np.int64)
    knn_b = np.array([[4, 1], [2, 3], [0, 4], [2, 1], [0, 1]], dtype=np.int64)
    nbr = np.array([[3, 1], [2, 0], [1, -1], [0, -1]], dtype=np.int64)
    cnt = np.array([[2.0, 1.0], [1.0, 1.0], [1.0, 0.0], [2.0, 0.0]], dtype=np.float32)
    return GraphArtifacts(
        n_users=N_USERS, n_items=N_ITEMS, train_user=user, train_item=item,
        user_degree=np.bincount(user, minlength=N_USERS).astype(np.float32),
        item_degree=np.bincount(item, minlength=N_ITEMS).astype(np.float32),
        item_knn={"image": (knn_a, np.ones_like(knn_a, dtype=np.float32)),
                  "text": (knn_b, np.ones_like(knn_b, dtype=np.float32))},
        user_nbr=nbr, user_cnt=cnt, key="tiny")


def dense_reference(model, art: GraphArtifacts, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """docs/equations.md section 1 with dense matrices, written independently of the edge lists."""
    n = N_USERS + N_ITEMS
    adj = torch.zeros(n, n, dtype=torch.float64)
    for u, i in TRAIN:
        adj[u, N_USERS + i] = adj[N_USERS + i, u] = 1.0
    deg = adj.sum(1)
    a_hat = adj / torch.sqrt(deg[:, None] * deg[None, :])
    s = torch.zeros(N_ITEMS, N_ITEMS, dtype=torch.float64)
    for name, mix in (("image", 0.1), ("text", 0.9)):
        knn = torch.zeros(N_ITEMS, N_ITEMS, dtype=torch.float64)
        for i, row in enumerate(art.item_knn[name][0]):
            knn[i, row] = 1.0
        d = knn.sum(1)
        s += mix * knn / torch.sqrt(d[:, None] * d[None, :])
    uu = torch.zeros(N_USERS, N_USERS, dtype=torch.float64)
    for u in range(N_USERS):
        valid = art.user_nbr[u] >= 0
        w = torch.softmax(torch.tensor(art.user_cnt[u][valid], dtype=torch.float64), 0)
        uu[u, torch.tensor(art.user_nbr[u][valid])] = w
    enc = model.encoder
    users_out, items_out = [], []
    for m, f in enumerate(feats):
        x_items = enc.projections[m](f).double()
        x = torch.cat([enc.preferences[m].weight.double(), x_items])
        x = x / x.norm(dim=1, keepdim=True)
        h1 = a_hat @ x
        h2 = a_hat @ h1
        r = x + h1 + h2
        ru, ri = r[:N_USERS], r[N_USERS:]
        items_out.append(ri + s @ ri)
        users_out.append(ru + uu @ ru)
    return torch.stack(users_out, 1), torch.stack(items_out, 1)


@pytest.fixture
def setup():
    art = tiny_artifacts()
    g = full_graph(art, ["image", "text"], {}).compute_graph(2)
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(N_ITEMS, 6, generator=gen), torch.randn(N_ITEMS, 3, generator=gen)]
    cfg = ModelConfig(dim=4, hidden_mult=2)
    model = build_model(N_USERS, N_ITEMS, [6, 3], cfg, seed=3)
    return art, g, feats, cfg, model


def test_encoder_matches_dense_reference(setup):
    art, g, feats, _, model = setup
    users, items = model.encode(g, feats)
    ref_u, ref_i = dense_reference(model, art, feats)
    assert users.shape == (N_USERS, 2, 4)
    torch.testing.assert_close(users.double(), ref_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items.double(), ref_i, rtol=1e-5, atol=1e-6)


def test_user_without_neighbours_gets_no_user_graph_term(setup):
    art, g, feats, _, model = setup
    art.user_nbr[2] = -1
    g2 = full_graph(art, ["image", "text"], {}).compute_graph(2)
    u_with, _ = model.encode(g, feats)
    u_without, _ = model.encode(g2, feats)
    # user 2 changed; user 0 (whose neighbours are 3 and 1) did not
    assert not torch.allclose(u_with[2], u_without[2])
    torch.testing.assert_close(u_with[0], u_without[0])


def test_model_init_is_seeded_and_leaves_global_rng_alone():
    cfg = ModelConfig(dim=4)
    state = torch.get_rng_state()
    a = build_model(3, 4, [5], cfg, seed=11)
    b = build_model(3, 4, [5], cfg, seed=11)
    c = build_model(3, 4, [5], cfg, seed=12)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.encoder.projections[0].w1, c.encoder.projections[0].w1)


@pytest.mark.parametrize("variant,stage", [("margo", PRETRAIN), ("margo", CALIBRATE), ("dragon", DRAGON)])
def test_score_vectors_agree_with_training_fusion(setup, variant, stage):
    _, g, feats, cfg, _ = setup
    cfg.variant = variant
    cfg.fusion_scale = "num_modalities"
    model = build_model(N_USERS, N_ITEMS, [6, 3], cfg, seed=1)
    if model.theta is not None:
        model.theta.reset(1.0, 5)
    users_emb, items_emb = model.encode(g, feats)
    uvec, ivec = model.score_vectors(stage, users_emb, items_emb)
    full = uvec @ ivec.t()
    u = torch.tensor([0, 1, 2, 3, 3])
    i = torch.tensor([4, 0, 2, 1, 3])
    cu, ci = model.fusion_coefficients(stage, u, i)
    y = fuse(modality_ratings(users_emb[u], items_emb[i]), cu, ci)
    torch.testing.assert_close(full[u, i], y)
    if stage == CALIBRATE:
        # Eq. 3 scaled by M: y = 2 * sum_m w_i^m r^m
        w = torch.softmax(model.theta.weight[i], 1)
        manual = 2 * (w * modality_ratings(users_emb[u], items_emb[i])).sum(1)
        torch.testing.assert_close(y, manual)


def _cal_grads(setup, variant: str):
    _, g, feats, cfg, _ = setup
    cfg.variant = variant
    cfg.tau = 0.5
    model = build_model(N_USERS, N_ITEMS, [6, 3], cfg, seed=2)
    model.theta.reset(0.5, 1)
    users_emb, items_emb = model.encode(g, feats)
    u, i, j = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 3, 4]), torch.tensor([3, 4, 0, 1])
    r_pos = modality_ratings(users_emb[u], items_emb[i])
    r_neg = modality_ratings(users_emb[u], items_emb[j])
    _, ci_pos = model.fusion_coefficients(CALIBRATE, u, i)
    _, ci_neg = model.fusion_coefficients(CALIBRATE, u, j)
    y_pos, y_neg = fuse(r_pos, None, ci_pos), fuse(r_neg, None, ci_neg)
    # make every triplet supervised: positive fused margin
    flip = (y_pos <= y_neg).nonzero().flatten()
    assert flip.numel() < 4, "fixture should have some correctly ranked triplets"
    cal, frac = calibration_term(model, cfg, r_pos, r_neg, y_pos, y_neg, model.item_weights(i),
                                 model.item_weights(j))
    assert cal.item() > 0 and frac > 0
    cal.backward()
    theta_grad = model.theta.weight.grad
    encoder_grads = [p.grad for p in model.encoder.parameters()]
    return theta_grad, encoder_grads


def test_calibration_loss_moves_only_theta_with_stop_gradient(setup):
    theta_grad, encoder_grads = _cal_grads(setup, "margo")
    assert theta_grad is not None and theta_grad.abs().sum() > 0
    assert all(gr is None or gr.abs().sum() == 0 for gr in encoder_grads)


def test_calibration_loss_reaches_ratings_without_stop_gradient(setup):
    theta_grad, encoder_grads = _cal_grads(setup, "wo_nograd")
    assert theta_grad is not None and theta_grad.abs().sum() > 0
    assert any(gr is not None and gr.abs().sum() > 0 for gr in encoder_grads)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 1.0, 100.0])
def test_wo_cal_has_no_calibration_term_for_any_alpha(setup, alpha):
    _, g, feats, _, _ = setup
    u, i, j = torch.tensor([0, 1, 2]), torch.tensor([0, 2, 1]), torch.tensor([3, 4, 4])
    losses = {}
    for variant in ("wo_cal", "margo"):
        cfg = ModelConfig(dim=4, hidden_mult=2, variant=variant, alpha=alpha)
        model = build_model(N_USERS, N_ITEMS, [6, 3], cfg, seed=2)
        users_emb, items_emb = model.encode(g, feats)
        eu = users_emb[u]
        losses[variant] = ratings_loss(model, CALIBRATE, cfg, modality_ratings(eu, items_emb[i]),
                                       modality_ratings(eu, items_emb[j]), u, i, j)
    parts = losses["wo_cal"]
    assert parts.cal == 0.0 and parts.calibrated == 0.0
    assert parts.total.item() == pytest.approx(parts.bpr + parts.reg, abs=1e-7)
    # the same model under margo's name does calibrate when alpha > 0: the switch is the variant
    assert (losses["margo"].cal > 0) == (alpha > 0)
    assert losses["margo"].bpr == parts.bpr


def test_only_a_contradicting_alpha_is_reported():
    assert get_variant("wo_cal").ignored_settings(0.0) == []
    assert "model.alpha=1 is ignored" in get_variant("wo_cal").ignored_settings(1.0)[0]
    assert get_variant("margo").ignored_settings(1.0) == []


def test_stages_of_each_variant():
    assert get_variant("margo").stages == (PRETRAIN, CALIBRATE)
    assert get_variant("wo_weight").stages == (PRETRAIN,)
    assert get_variant("wo_two_stage").stages == (CALIBRATE,)
    assert get_variant("dragon").stages == (DRAGON,)
    with pytest.raises(ConfigError, match="nope"):
        get_variant("nope")


@pytest.mark.parametrize("variant", ["margo", "lightgcn"])
def test_full_batch_outputs_only_its_nodes_with_the_same_loss_and_gradients(setup, variant):
    art, g, feats, cfg, _ = setup
    cfg = ModelConfig(dim=4, hidden_mult=2, variant=variant)
    model = build_model(N_USERS, N_ITEMS, [6, 3], cfg, seed=3)
    users, pos, neg = torch.tensor([2, 0, 2]), torch.tensor([3, 1, 1]), torch.tensor([4, 4, 0])
    batch = Batch.full(g, users, pos, neg)
    assert batch.graph.output_users.tolist() == [0, 2] and batch.graph.output_items.tolist() == [0, 1, 3, 4]
    stage = get_variant(variant).stages[-1]

    def loss_and_grads(ue, ie, ul, pl, nl):
        parts = ratings_loss(model, stage, cfg, modality_ratings(ue[ul], ie[pl]), modality_ratings(ue[ul], ie[nl]),
                             users, pos, neg)
        return parts.total, torch.autograd.grad(parts.total, list(model.parameters()))

    ue, ie = model.encode(batch.graph, feats)
    assert ue.shape[0] == 2 and ie.shape[0] == 4
    loss_b, grads_b = loss_and_grads(ue, ie, batch.users_local, batch.pos_local, batch.neg_local)
    ue, ie = model.encode(g, feats)
    loss_w, grads_w = loss_and_grads(ue, ie, users, pos, neg)
    torch.testing.assert_close(loss_b, loss_w)
    for a, b in zip(grads_b, grads_w):
        torch.testing.assert_close(a, b)
    # forward: the column path the training step takes rates the triplets as the whole rows do
    r_pos, r_neg = model(batch, feats)
    torch.testing.assert_close(r_pos, modality_ratings(ue[users], ie[pos]))
    torch.testing.assert_close(r_neg, modality_ratings(ue[users], ie[neg]))


def test_item_inputs_are_the_same_whichever_way_the_rows_are_taken(setup):
    _, _, feats, _, model = setup
    enc = model.encoder
    every = [mlp(f) for mlp, f in zip(enc.projections, feats)]
    for items in (torch.tensor([4, 1]), torch.tensor([0, 3, 1, 4])):  # below and above half of the items
        for got, full in zip(enc.item_inputs(feats, items), every):
            torch.testing.assert_close(got, full[items])


@pytest.mark.parametrize("scale,factor", [("num_modalities", 1.0), ("one", 0.5)])
def test_stage_two_start_with_uniform_weights_is_stage_one_scores_times_a_constant(setup, scale, factor):
    _, g, feats, _, _ = setup
    cfg = ModelConfig(dim=4, hidden_mult=2, variant="margo", fusion_scale=scale)
    model = build_model(N_USERS, N_ITEMS, [6, 3], cfg, seed=4)
    model.theta.reset(0.0, 0)  # θ = 0: w = 1/M for every item
    users_emb, items_emb = model.encode(g, feats)
    u1, i1 = model.score_vectors(PRETRAIN, users_emb, items_emb)
    u2, i2 = model.score_vectors(CALIBRATE, users_emb, items_emb)
    # M = 2: the factor is a power of two, so "equal" and "a rescaling" hold bit for bit
    assert torch.equal(u2 @ i2.t(), factor * (u1 @ i1.t()))


@pytest.mark.parametrize("variant", ["margo", "lightgcn"])
def test_one_block_of_every_column_is_the_whole_graph_encoding(setup, variant):
    """Local mode: ``encode_columns`` holds all M*d columns, the flat form of ``encode``."""
    _, g, feats, cfg, _ = setup
    model = build_model(N_USERS, N_ITEMS, [6, 3], ModelConfig(dim=4, hidden_mult=2, variant=variant), seed=3)
    users, items = model.encode(g, feats)
    users_c, items_c = model.encode_columns(g, feats)
    assert model.columns() == (0, model.n_slices * 4)
    assert torch.equal(users_c, users.flatten(1)) and torch.equal(items_c, items.flatten(1))


@pytest.mark.parametrize("bounds", [[0, 8], [0, 4, 8], [0, 2, 5, 8], [0, 3, 3, 8]])
def test_the_blocks_ratings_sum_to_the_modality_ratings(bounds):
    """Blocks of whole slices, inside one slice, across a slice border, and an empty block."""
    gen = torch.Generator().manual_seed(5)
    eu, ei = torch.randn(6, 2, 4, generator=gen), torch.randn(6, 2, 4, generator=gen)
    flat_u, flat_i = eu.flatten(1), ei.flatten(1)
    parts = [block_ratings(flat_u[:, a:b], flat_i[:, a:b], a, 4, 2) for a, b in zip(bounds, bounds[1:])]
    assert all(p.shape == (6, 2) for p in parts)
    torch.testing.assert_close(sum(parts), modality_ratings(eu, ei))
    if bounds == [0, 8]:  # one block of everything: the same sums in the same order
        assert torch.equal(parts[0], modality_ratings(eu, ei))
    if bounds == [0, 4, 8]:  # a block of one slice rates that slice alone
        assert torch.equal(parts[0][:, 1], torch.zeros(6)) and torch.equal(parts[1][:, 0], torch.zeros(6))


def test_the_widest_modalitys_projection_gradient_is_complete_first_and_only_it_is_replicated(setup):
    """The widest modality (6-d here) is projected last, so a backward completes its gradients
    first: their sum over the workers travels while the other modality is back-propagated."""
    _, g, feats, _, model = setup
    assert model.encoder.projections.order == [1, 0]
    done: list[int] = []
    for p in model.parameter_groups()["dense"]:
        p.register_post_accumulate_grad_hook(lambda q: done.append(id(q)))
    users_c, items_c = model.encode_columns(g, feats)
    (users_c.sum() + (items_c * torch.arange(1.0, 9.0)).sum()).backward()
    widest, narrowest = model.encoder.projections[0], model.encoder.projections[1]
    assert set(done[:4]) == {id(p) for p in widest.parameters()}
    assert set(done[4:]) == {id(p) for p in narrowest.parameters()}
    # the replicated module is exactly the dense parameter group; the ID baselines have none
    assert {id(p) for p in model.replicated().parameters()} == {id(p) for p in model.parameter_groups()["dense"]}
    assert build_model(N_USERS, N_ITEMS, [], ModelConfig(variant="lightgcn"), seed=0).replicated() is None


def test_a_wrapper_of_the_projections_is_called_without_changing_the_state_dict(setup):
    _, g, feats, _, model = setup
    keys = list(model.state_dict())
    calls: list[int] = []

    class Counting(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, features, rows=None):
            calls.append(len(features))
            return self.inner(features, rows)

    before = model.encode_columns(g, feats)
    model.encoder.replicate_through(Counting(model.encoder.projections))
    after = model.encode_columns(g, feats)
    assert calls == [2]  # one call for every modality: one forward per step for DDP
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize("variant", ["margo", "lightgcn", "bpr_mf"])
def test_each_encoders_propagation_passes_the_column_split_check(setup, variant):
    art, g, _, cfg, _ = setup
    model = build_model(N_USERS, N_ITEMS, [6, 3], ModelConfig(dim=4, hidden_mult=2, variant=variant), seed=3)
    g = full_graph(art, ["image", "text"], {}).compute_graph(model.encoder.n_layers)  # bpr_mf: no steps
    check_column_linear(lambda x: model.encoder.propagate_rows(x, g), N_USERS + N_ITEMS, torch.device("cpu"), "enc")


@pytest.mark.parametrize("propagate,what", [
    (lambda x: (torch.relu(x), x), "2X \\+ Y"),  # not linear
    (lambda x: (x + x.sum(1, keepdim=True), x), "column 0 alone"),  # mixes the columns
])
def test_a_propagation_that_breaks_the_column_split_is_refused(propagate, what):
    with pytest.raises(ValueError, match=f"Odd's propagation is not linear per column \\({what}"):
        check_column_linear(propagate, 6, torch.device("cpu"), "Odd")


def test_the_whole_graph_forward_refuses_an_encoder_that_is_not_linear_per_column(setup, monkeypatch):
    _, g, feats, _, model = setup
    batch = Batch.full(g, torch.tensor([2, 0]), torch.tensor([3, 1]), torch.tensor([4, 4]))
    linear = model.encoder.propagate_rows
    monkeypatch.setattr(model.encoder, "propagate_rows", lambda x, graph: tuple(torch.tanh(t) for t in linear(x, graph)))
    with pytest.raises(ValueError, match="DragonEncoder's propagation is not linear per column.*train.mode=sampled"):
        model(batch, feats)
