"""Dense gradients summed over the workers while the backward runs (dist/gradients.py)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from margo_dist.dist.comm import LocalComm, TorchComm
from margo_dist.dist.gradients import GradientSum
from margo_dist.dist.processes import run_workers


class RecordingComm(LocalComm):
    """One process that writes down the size of each all-reduce it is asked to start or to run."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def start_all_reduce_(self, t: Tensor):
        self.events.append(f"start {t.numel()}")
        return super().start_all_reduce_(t)

    def all_reduce_(self, t: Tensor) -> Tensor:
        self.events.append(f"rest of {t.numel()}")
        return t


class Mark(torch.autograd.Function):
    """The identity, noting when its backward runs."""

    @staticmethod
    def forward(ctx, x, events, label):
        ctx.events, ctx.label = events, label
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.events.append(ctx.label)
        return grad, None, None


def test_a_gradient_is_sent_as_soon_as_it_is_complete_while_the_backward_goes_on():
    events: list[str] = []
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    grads = GradientSum(RecordingComm(events), [a, b])
    # b is used first, a last: autograd completes a's gradient, then runs the marked work, then b's
    loss = Mark.apply(b * 2, events, "backward goes on").sum() + (a * 3).sum()
    loss.backward()
    assert events == ["start 3", "backward goes on", "start 2"]
    assert grads.finish(loss.detach()) == float(loss.detach())
    assert events[-1] == "rest of 1"  # every gradient had started: only the loss is left
    assert a.grad.tolist() == [3.0] * 3 and b.grad.tolist() == [2.0] * 2


def test_all_reduces_start_in_the_given_order_whatever_order_the_gradients_complete_in():
    events: list[str] = []
    a, b, c = (nn.Parameter(torch.ones(k)) for k in (1, 2, 3))
    grads = GradientSum(RecordingComm(events), [a, b, c])
    # autograd completes c's gradient first, then b's, then a's (the reverse of the given order)
    loss = Mark.apply(a * 1, events, "a's work").sum() + Mark.apply(b * 1, events, "b's work").sum() \
        + Mark.apply(c * 1, events, "c's work").sum()
    loss.backward()
    assert events == ["c's work", "b's work", "a's work", "start 1", "start 2", "start 3"]
    grads.finish(loss.detach())


def test_a_parameter_without_a_gradient_holds_back_those_after_it_into_the_last_all_reduce():
    events: list[str] = []
    a, b, c = (nn.Parameter(torch.ones(k)) for k in (2, 3, 4))
    grads = GradientSum(RecordingComm(events), [a, b, c])
    ((a * 1).sum() + (c * 1).sum()).backward()  # b gets no gradient
    grads.finish(torch.tensor(1.0))
    assert events == ["start 2", "rest of 5"]  # a alone, then c's 4 with the loss
    events.clear()  # the next step starts afresh
    ((a * 1).sum() + (b * 1).sum() + (c * 1).sum()).backward()
    grads.finish(torch.tensor(1.0))
    assert events == ["start 2", "start 3", "start 4", "rest of 1"]


def summed_gradients(rank: int, world: int) -> dict:
    """Parameters used in a backward whose gradient order is not the given one; one has none."""
    w1, w2, unused, w3 = (nn.Parameter(torch.zeros(k, dtype=torch.float64)) for k in (4, 3, 2, 5))
    grads = GradientSum(TorchComm(), [w2, w1, unused, w3])
    scale = float(rank + 1)
    loss = ((w1 * torch.arange(4.0, dtype=torch.float64) * scale).sum()
            + (w2 * scale * 10).sum() + (w3 * -scale).sum() + scale)
    loss.backward()
    total = grads.finish(loss.detach())
    return {"loss": total, "w1": w1.grad.tolist(), "w2": w2.grad.tolist(), "w3": w3.grad.tolist(),
            "unused": unused.grad}


def test_gradients_and_the_loss_are_summed_over_the_workers():
    results = run_workers(summed_gradients, 3)
    s = 1.0 + 2.0 + 3.0
    for got in results:
        assert got["loss"] == s  # each worker's loss is rank + 1 at zero parameters
        assert got["w1"] == [0.0, s, 2 * s, 3 * s]
        assert got["w2"] == [10 * s] * 3
        assert got["w3"] == [-s] * 5
        assert got["unused"] is None


def test_a_parameter_listed_twice_is_refused():
    p = nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match="listed twice"):
        GradientSum(LocalComm(), [p, p])
