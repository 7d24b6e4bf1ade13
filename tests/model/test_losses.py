"""Loss terms against hand-computed values and autograd behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from margo_dist.model.losses import (
    bpr_loss,
    calibration_loss,
    confidence,
    embedding_reg,
    reliability,
)

E = math.e


def test_bpr_matches_hand_values() -> None:
    pos = torch.tensor([2.0, 0.0, 1.0])
    neg = torch.tensor([1.0, 1.0, 1.0])
    # neg - pos = [-1, 1, 0]; -log sigmoid(pos - neg) = log(1 + exp(neg - pos))
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1)) + math.log(2)) / 3
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)
    # one triplet: a mean over a batch of 1 equals the single term (no double division)
    one = bpr_loss(torch.tensor([0.5]), torch.tensor([2.0]))
    assert one.item() == pytest.approx(math.log(1 + math.exp(1.5)), rel=1e-6)


def test_bpr_is_stable_for_large_margins() -> None:
    # log(1 + exp(1000)) = 1000 (+ exp(-1000)); naive log(sigmoid) would give inf
    val = bpr_loss(torch.tensor([-500.0]), torch.tensor([500.0]))
    assert val.item() == pytest.approx(1000.0)


def test_bpr_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="neg"):
        bpr_loss(torch.zeros(3), torch.zeros(2))


def test_reliability_mixed_negative_and_ties() -> None:
    r_pos = torch.tensor([[3.0, 1.0], [0.0, 2.0], [1.0, 1.0], [2.0, 5.0], [4.0, 4.0]])
    r_neg = torch.tensor([[1.0, 2.0], [1.0, 3.0], [1.0, 0.0], [1.0, 3.0], [4.0, 4.0]])
    # delta rows: [2, -1], [-1, -1], [0, 1], [1, 2], [0, 0]
    z, mask = reliability(r_pos, r_neg)
    expected = torch.tensor(
        [
            [1.0, 0.0],  # only modality 0 agrees
            [0.0, 0.0],  # none agrees: undefined, zeroed
            [1 / (1 + E), E / (1 + E)],  # softmax(0, 1); the tie counts
            [1 / (1 + E), E / (1 + E)],  # softmax(1, 2) = softmax(0, 1)
            [0.5, 0.5],  # two ties
        ]
    )
    assert torch.allclose(z, expected, atol=1e-6)
    assert mask.tolist() == [True, False, True, True, True]
    assert mask.dtype == torch.bool


def test_reliability_all_negative_has_no_nan_in_value_or_grad() -> None:
    r_pos = torch.tensor([[0.0, -1.0, 2.0]], requires_grad=True)
    r_neg = torch.tensor([[1.0, 0.0, 3.0]], requires_grad=True)
    z, mask = reliability(r_pos, r_neg)
    assert z.tolist() == [[0.0, 0.0, 0.0]]
    assert mask.tolist() == [False]
    z.sum().backward()
    assert torch.equal(r_pos.grad, torch.zeros(1, 3))
    assert torch.equal(r_neg.grad, torch.zeros(1, 3))


def test_confidence_values() -> None:
    y_pos = torch.tensor([2.0, 1.0, 0.5, 1.3])
    y_neg = torch.tensor([1.0, 1.0, 1.0, 1.0])
    g = confidence(y_pos, y_neg, tau=0.5)
    # [tanh(1/0.5), equal -> 0, below -> 0, tanh(0.3/0.5)]
    expected = [math.tanh(2.0), 0.0, 0.0, math.tanh(0.6)]
    assert g.tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_confidence_rejects_bad_tau(tau: float) -> None:
    with pytest.raises(ValueError, match="tau"):
        confidence(torch.ones(2), torch.zeros(2), tau)


def _tiny_batch() -> dict[str, torch.Tensor]:
    return {
        "z": torch.tensor([[1.0, 0.0], [0.25, 0.75], [0.0, 0.0]]),
        "mask": torch.tensor([True, True, False]),
        "gamma": torch.tensor([0.5, 0.2, 0.9]),
        "w_pos": torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.3, 0.7]]),
        "w_neg": torch.tensor([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]]),
    }


def test_calibration_loss_value_with_zero_entries() -> None:
    b = _tiny_batch()
    # row 0: q = ([.6,.4] + [.2,.8]) / 2 = [.4, .6]; KL = 1*log(1/.4) + 0*log0 = log 2.5
    # row 1: q = [.5, .5]; KL = .25 log(.25/.5) + .75 log(.75/.5)
    # row 2: masked -> 0, but it still counts in the batch mean (divide by 3)
    kl0 = math.log(2.5)
    kl1 = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    expected = (0.5 * kl0 + 0.2 * kl1 + 0.0) / 3
    loss = calibration_loss(b["z"], b["mask"], b["gamma"], b["w_pos"], b["w_neg"])
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_calibration_masked_row_ignored_even_with_nonzero_gamma() -> None:
    b = _tiny_batch()
    base = calibration_loss(b["z"], b["mask"], b["gamma"], b["w_pos"], b["w_neg"]).item()
    gamma = b["gamma"].clone()
    gamma[2] = 100.0
    z = b["z"].clone()
    z[2] = torch.tensor([0.5, 0.5])  # would give KL > 0 if the mask were ignored
    again = calibration_loss(z, b["mask"], gamma, b["w_pos"], b["w_neg"]).item()
    assert again == pytest.approx(base, rel=1e-7)


def test_calibration_grad_to_weights_by_hand_and_zero_q_is_safe() -> None:
    # q has an exact zero where z is zero: xlogy(0, 0) must give gradient 0, not NaN
    z = torch.tensor([[1.0, 0.0], [0.25, 0.75], [0.0, 0.0]])
    mask = torch.tensor([True, True, False])
    gamma = torch.tensor([0.5, 0.2, 0.9])
    w_pos = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], requires_grad=True)
    w_neg = torch.tensor([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0]], requires_grad=True)
    loss = calibration_loss(z, mask, gamma, w_pos, w_neg)
    loss.backward()
    # dL/dw_pos[b, m] = -gamma_b * z_bm / q_bm * 0.5 / B for unmasked rows, else 0
    # row 0: q = [1, 0] -> [-0.5 * 1 / 1 * 0.5 / 3, 0]
    # row 1: q = [.5, .5] -> [-0.2 * .25 / .5 * .5 / 3, -0.2 * .75 / .5 * .5 / 3]
    expected = torch.tensor(
        [
            [-0.5 * 0.5 / 3, 0.0],
            [-0.2 * 0.5 * 0.5 / 3, -0.2 * 1.5 * 0.5 / 3],
            [0.0, 0.0],
        ]
    )
    assert not torch.isnan(w_pos.grad).any()
    assert torch.allclose(w_pos.grad, expected, atol=1e-7)
    assert torch.allclose(w_neg.grad, expected, atol=1e-7)


def _pipeline(stop_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ratings -> z, gamma (through fused scores) -> calibration loss, as in MARGO."""
    r_pos = torch.tensor([[2.0, 1.0], [0.0, 0.5], [1.0, 3.0], [1.5, 1.5]], requires_grad=True)
    r_neg = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.5, 1.0], [0.5, 0.5]], requires_grad=True)
    # row deltas: [1, -1] (zero z entry), [-1, -1.5] (masked), [.5, 2], [1, 1]
    theta_pos = torch.tensor([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2], [0.0, 0.7]], requires_grad=True)
    theta_neg = torch.tensor([[0.2, 0.1], [-0.3, 0.0], [0.6, -0.1], [0.4, 0.4]], requires_grad=True)
    w_pos = torch.softmax(theta_pos, dim=1)
    w_neg = torch.softmax(theta_neg, dim=1)
    y_pos = (w_pos * r_pos).sum(dim=1)
    y_neg = (w_neg * r_neg).sum(dim=1)
    z, mask = reliability(r_pos, r_neg)
    gamma = confidence(y_pos, y_neg, tau=1.0)
    assert mask.tolist() == [True, False, True, True]
    assert z[0, 1].item() == 0.0
    loss = calibration_loss(z, mask, gamma, w_pos, w_neg, stop_grad=stop_grad)
    return loss, r_pos, r_neg, theta_pos


def test_stop_grad_blocks_ratings_but_not_weights() -> None:
    loss, r_pos, r_neg, theta_pos = _pipeline(stop_grad=True)
    g_rpos, g_rneg, g_theta = torch.autograd.grad(
        loss, [r_pos, r_neg, theta_pos], allow_unused=True
    )
    for g in (g_rpos, g_rneg):
        assert g is None or torch.equal(g, torch.zeros_like(g))
    assert g_theta is not None
    assert torch.isfinite(g_theta).all()
    # rows 0, 2, 3 have gamma > 0 and a non-zero KL, so their weights move
    assert (g_theta[[0, 2, 3]].abs().sum(dim=1) > 0).all()


def test_without_stop_grad_ratings_get_finite_nonzero_grad() -> None:
    loss, r_pos, r_neg, theta_pos = _pipeline(stop_grad=False)
    g_rpos, g_rneg, g_theta = torch.autograd.grad(loss, [r_pos, r_neg, theta_pos])
    for g in (g_rpos, g_rneg, g_theta):
        assert torch.isfinite(g).all()
    assert g_rpos.abs().sum() > 0
    assert g_rneg.abs().sum() > 0


def test_stop_grad_value_equals_no_stop_grad_value() -> None:
    with_sg, *_ = _pipeline(stop_grad=True)
    without_sg, *_ = _pipeline(stop_grad=False)
    assert with_sg.item() == pytest.approx(without_sg.item(), rel=1e-7)
    assert with_sg.item() > 0


def test_calibration_rejects_bad_shapes() -> None:
    b = _tiny_batch()
    with pytest.raises(ValueError, match="gamma"):
        calibration_loss(b["z"], b["mask"], b["gamma"][:2], b["w_pos"], b["w_neg"])
    with pytest.raises(ValueError, match="mask"):
        calibration_loss(b["z"], b["mask"].float(), b["gamma"], b["w_pos"], b["w_neg"])


def test_embedding_reg_value_and_grad() -> None:
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    b = torch.tensor([[0.0, 2.0]], requires_grad=True)
    # mean(a^2) = (1 + 4 + 9 + 16) / 4 = 7.5; mean(b^2) = (0 + 4) / 2 = 2
    reg = embedding_reg([a, b], weight=0.1)
    assert reg.item() == pytest.approx(0.1 * (7.5 + 2.0), rel=1e-6)
    reg.backward()
    # d/da = 0.1 * 2a / 4
    assert torch.allclose(a.grad, 0.1 * 2 * a.detach() / 4)
    with pytest.raises(ValueError, match="tables"):
        embedding_reg([], weight=0.1)
