"""The replicated (dense) parameters' gradients, summed over the workers while the backward runs.

Every worker's loss is its share of the step's loss, so the step's gradient of a replicated
parameter is the sum of the workers' gradients. Summing them in one all-reduce after the
backward makes every worker wait for the slowest one's whole backward and then for the
transfer. Here, as DDP does with its buckets, each parameter's all-reduce starts in place,
asynchronously, as soon as autograd has accumulated its gradient, so it travels while the
rest of the backward runs (the projection MLPs: the widest modality's weight gradient, most
of the bytes, while the other modalities are back-propagated).

Collectives must be issued in the same order on every worker, whatever order autograd
completes the gradients in: the all-reduces start in one fixed order (``params``, the order
the model expects its gradients in), a parameter whose gradient is ready waiting for those
before it. ``finish`` sums what has not started (a parameter without a gradient, and those
after it) in one all-reduce together with the worker's loss, waits for the rest, and
returns the step's loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from margo_dist.dist.comm import Communicator


class GradientSum:
    """Sums ``params``' gradients over ``comm``'s workers, started from gradient hooks.

    ``params``: every replicated parameter, in the order a backward is expected to complete
    their gradients (a wrong order is still exact, only slower). A backward of anything
    that reaches these parameters must be followed by ``finish`` on every worker.
    """

    def __init__(self, comm: Communicator, params: list[nn.Parameter]) -> None:
        if len({id(p) for p in params}) != len(params):
            raise ValueError("GradientSum: a parameter is listed twice")
        self.comm = comm
        self.params = list(params)
        self._position = {id(p): k for k, p in enumerate(self.params)}
        self._ready = [False] * len(self.params)
        self._next = 0  # the first parameter whose all-reduce has not started
        self._started: list[Any] = []
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._accumulated)

    def _accumulated(self, param: Tensor) -> None:
        """Autograd has accumulated ``param``'s gradient: start every all-reduce now due in order."""
        self._ready[self._position[id(param)]] = True
        while self._next < len(self.params) and self._ready[self._next]:
            grad = self.params[self._next].grad
            assert grad is not None
            self._started.append(self.comm.start_all_reduce_(grad))
            self._next += 1

    def finish(self, loss: Tensor) -> float:
        """After the backward: every gradient summed in place; returns ``loss`` (this worker's
        part of the step's loss, a detached 0-d tensor) summed over the workers."""
        rest = [p.grad for p in self.params[self._next:] if p.grad is not None]
        dtype = rest[0].dtype if rest else torch.float64
        tail = self.comm.all_reduce_(torch.cat([g.flatten() for g in rest] + [loss.reshape(1).to(dtype)]))
        offset = 0
        for g in rest:
            g.copy_(tail[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
        for work in self._started:
            work.wait()
        self._started, self._next = [], 0
        self._ready = [False] * len(self.params)
        return float(tail[-1])
