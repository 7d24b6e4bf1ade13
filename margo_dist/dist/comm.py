"""The communicator seam: rank, world size, leader, and the collectives training needs.

``LocalComm`` is the one-process implementation (every collective is the identity);
``TorchComm`` wraps the default ``torch.distributed`` process group (gloo on CPU,
nccl on GPU). Its bytes move through one ``Collectives`` object (``Counting`` adds them
up for the benchmarks), each collective begun by ``TorchComm.start``, the one place that
stages tensors through host memory where the group cannot take them (gloo with GPU
tensors). The collectives live here, the autograd ones nowhere else:

- ``start_gather(local, width)``: every rank's rows, padded to ``width`` rows each, on
  every rank ([n_r, F] per rank -> [world * width, F], rank r's rows at r * width);
  it returns at once and ``wait()`` gives the rows, so the transfer can overlap
  computation. Its gradient goes back to the owner of each row, summed over the ranks
  that used it (the adjoint of an all-gather, sent as an all-to-all: each rank
  receives only the gradient of its own rows).
- ``start_gather_columns(local, width, bounds)``: every rank's rows as in
  ``start_gather``, but only this rank's block of columns (``bounds``: where each rank's
  columns start, and the end): a transpose from rows held by their owners to columns held
  by their ranks, by all-to-all. Each column of each row lives on one rank, so the
  gradient goes back the same way with no sum.
- ``summed(t)``: ``t`` summed over the ranks, on every rank; its gradient is the
  gradients summed over the ranks (each rank's loss reads the sum).
- ``fetch_rows(local, ...)``: the rows other ranks asked for, by all-to-all; the
  gradient of each fetched row returns to its owner and is summed there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Protocol

import torch
from torch import Tensor


class Communicator(ABC):
    """What a training worker may ask of its peers."""

    rank: int
    world_size: int

    @property
    def is_leader(self) -> bool:
        """Rank 0 writes the run folder and logs the epoch lines."""
        return self.rank == 0

    @abstractmethod
    def all_reduce_(self, t: Tensor) -> Tensor:
        """Sum ``t`` over the ranks, in place (no autograd); returns ``t``."""

    @abstractmethod
    def start_gather(self, local: Tensor, width: int) -> "PendingRows":
        """Begin gathering every rank's rows [n_rank <= width, F]; ``wait()`` returns
        [world_size * width, F] with rank r's rows at r * width (differentiable)."""

    @abstractmethod
    def start_gather_columns(self, local: Tensor, width: int, bounds: list[int]) -> "PendingRows":
        """Begin gathering every rank's rows [n_rank <= width, F], keeping this rank's columns
        ``bounds[rank]:bounds[rank + 1]`` (``bounds``: world_size + 1 ascending offsets from 0
        to F); ``wait()`` returns [world_size * width, those columns] (differentiable)."""

    @abstractmethod
    def summed(self, t: Tensor) -> Tensor:
        """``t`` summed over the ranks (differentiable: the gradient is summed over the ranks too)."""

    @abstractmethod
    def all_to_all(self, send: Tensor, send_counts: list[int], recv_counts: list[int]) -> Tensor:
        """Rows ``send`` [sum send_counts, ...], grouped by destination rank -> the rows every rank
        sent to this one [sum recv_counts, ...], grouped by source rank (no autograd)."""

    @abstractmethod
    def fetch_rows(self, local: Tensor, asked: Tensor, send_counts: list[int], recv_counts: list[int]) -> Tensor:
        """Serve and receive row requests, differentiable in ``local``.

        ``asked``: the rows of ``local`` [n_own, F] the other ranks asked for, grouped by
        asking rank (``send_counts`` each); returns the rows this rank asked for, grouped
        by owner (``recv_counts`` each). The gradient of each returned row is summed into
        its owner's ``local`` row.
        """

    @abstractmethod
    def broadcast_object(self, obj: Any) -> Any:
        """The leader's ``obj`` on every rank."""

    @abstractmethod
    def barrier(self) -> None:
        """Wait for every rank."""


class LocalComm(Communicator):
    """One process: rank 0 of a world of 1."""

    rank = 0
    world_size = 1

    def all_reduce_(self, t: Tensor) -> Tensor:
        return t

    def start_gather(self, local: Tensor, width: int) -> "PendingRows":
        return PendingRows(None, local if local.shape[0] == width else _pad(local, width))

    def start_gather_columns(self, local: Tensor, width: int, bounds: list[int]) -> "PendingRows":
        _check_bounds(bounds, 1, local.shape[1])
        return self.start_gather(local, width)

    def summed(self, t: Tensor) -> Tensor:
        return t

    def all_to_all(self, send: Tensor, send_counts: list[int], recv_counts: list[int]) -> Tensor:
        return send

    def fetch_rows(self, local: Tensor, asked: Tensor, send_counts: list[int], recv_counts: list[int]) -> Tensor:
        return local.index_select(0, asked)

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def barrier(self) -> None:
        return None


class Collectives:
    """The process group's collectives that move bytes, each begun asynchronously (a work handle):
    the one place a byte leaves this rank. ``Counting`` adds up those bytes for the benchmarks."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist

    def all_reduce(self, t: Tensor) -> Any:
        """``t`` summed over the ranks, in place."""
        return self._dist.all_reduce(t, async_op=True)

    def all_gather(self, out: Tensor, local: Tensor) -> Any:
        """Every rank's ``local`` [n, ...] (equal shapes) into ``out`` [world * n, ...], rank r's at r * n."""
        return self._dist.all_gather(list(out.view(-1, *local.shape).unbind(0)), local, async_op=True)

    def all_to_all(self, out: Tensor, send: Tensor, out_splits: list[int] | None = None,
                   in_splits: list[int] | None = None) -> Any:
        """Block k of ``send`` (rows ``in_splits[k]``, or an equal share) to rank k; rank k's block to
        this rank lands at ``out``'s block k."""
        return self._dist.all_to_all_single(out, send, out_splits, in_splits, async_op=True)


class Counting(Collectives):
    """``Collectives`` that count the payload this rank sends to others (``bytes_sent``): what an
    all-reduce or all-gather contributes, and the blocks of an all-to-all not addressed to itself."""

    def __init__(self) -> None:
        super().__init__()
        self.rank, self.world_size = self._dist.get_rank(), self._dist.get_world_size()
        self.bytes_sent = 0

    def all_reduce(self, t: Tensor) -> Any:
        self.bytes_sent += t.numel() * t.element_size()
        return super().all_reduce(t)

    def all_gather(self, out: Tensor, local: Tensor) -> Any:
        self.bytes_sent += local.numel() * local.element_size()
        return super().all_gather(out, local)

    def all_to_all(self, out: Tensor, send: Tensor, out_splits: list[int] | None = None,
                   in_splits: list[int] | None = None) -> Any:
        rows = send.shape[0] if send.dim() else 0
        own = in_splits[self.rank] if in_splits is not None else rows // self.world_size
        per_row = send[0].numel() * send.element_size() if rows else 0
        self.bytes_sent += (rows - own) * per_row
        return super().all_to_all(out, send, out_splits, in_splits)


class TorchComm(Communicator):
    """The default ``torch.distributed`` group (initialised by Ray Train or the test harness).

    ``collectives``: how bytes move (default ``Collectives``; ``Counting`` for a benchmark)."""

    def __init__(self, collectives: Collectives | None = None) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("TorchComm needs an initialised torch.distributed process group")
        self._dist = dist
        self.collectives = collectives or Collectives()
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        # nccl reduces only GPU tensors: small host-side values travel through this device
        self.device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
            else torch.device("cpu")

    def start(self, collective: Callable[[Tensor, Tensor], Any], out: Tensor, send: Tensor) -> "Pending":
        """Begin ``collective(out, send)`` on the process group's device: directly when both tensors
        are there, else through host copies (gloo with GPU tensors, as when two workers share a
        GPU), ``out`` filled when the handle is waited on. ``out is send``: in place."""
        if out.device == self.device and send.device == self.device:
            return collective(out, send)
        host_send = send.to(self.device)
        host_out = host_send if out is send else torch.empty(out.shape, dtype=out.dtype, device=self.device)
        return _Staged(collective(host_out, host_send), host_out, out)

    def all_reduce_(self, t: Tensor) -> Tensor:
        self.start(lambda out, _send: self.collectives.all_reduce(out), t, t).wait()
        return t

    def start_gather(self, local: Tensor, width: int) -> "PendingRows":
        if local.shape[0] > width:
            raise ValueError(f"start_gather: rank {self.rank} has {local.shape[0]} rows, more than width {width}")
        flight: dict[str, Any] = {}
        rows = _GatherRows.apply(local, self, width, flight)
        return PendingRows(flight.pop("work"), rows,
                           lambda grad: flight.update(back=self._start_all_to_all(grad)))

    def start_gather_columns(self, local: Tensor, width: int, bounds: list[int]) -> "PendingRows":
        if local.shape[0] > width:
            raise ValueError(f"start_gather_columns: rank {self.rank} has {local.shape[0]} rows, more than "
                             f"width {width}")
        _check_bounds(bounds, self.world_size, local.shape[1])
        flight: dict[str, Any] = {}
        rows = _GatherColumns.apply(local, self, width, list(bounds), flight)
        return PendingRows(flight.pop("work"), rows,
                           lambda grad: flight.update(back=_ColumnBlocks.send_back(self, grad, width, bounds)))

    def summed(self, t: Tensor) -> Tensor:
        return _Summed.apply(t, self)

    def _start_all_to_all(self, grad: Tensor) -> tuple["Pending", Tensor]:
        """Begin sending every rank its equal block of rows of ``grad``; returns (work, received)."""
        send = grad.contiguous()
        received = torch.empty_like(send)
        return self.start(self.collectives.all_to_all, received, send), received

    def all_to_all(self, send: Tensor, send_counts: list[int], recv_counts: list[int]) -> Tensor:
        if len(send_counts) != self.world_size or len(recv_counts) != self.world_size \
                or sum(send_counts) != send.shape[0]:
            raise ValueError(f"all_to_all: rank {self.rank} sends {send.shape[0]} rows as {send_counts}, "
                             f"receives {recv_counts}, in a world of {self.world_size}")
        out = send.new_empty((sum(recv_counts), *send.shape[1:]))
        self.start(lambda o, i: self.collectives.all_to_all(o, i, list(recv_counts), list(send_counts)),
                   out, send.contiguous()).wait()
        return out

    def fetch_rows(self, local: Tensor, asked: Tensor, send_counts: list[int], recv_counts: list[int]) -> Tensor:
        return _FetchRows.apply(local, asked, self, list(send_counts), list(recv_counts))

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        self._dist.barrier()


class Pending(Protocol):
    """A collective in flight."""

    def wait(self) -> Any:
        """Block until it has finished."""


class _Staged:
    """A collective on host copies of device tensors (gloo with GPU tensors, as when two
    workers share a GPU): ``wait()`` waits for it, then copies the host result into the
    device tensor ``dest``."""

    def __init__(self, work: Any, host: Tensor, dest: Tensor) -> None:
        self._work, self._host, self._dest = work, host, dest

    def wait(self) -> None:
        self._work.wait()
        with torch.no_grad():
            self._dest.copy_(self._host)


class PendingRows:
    """A gather in flight: ``wait()`` returns its rows once they have arrived.

    ``send_back(grad)`` begins the transfer of the rows' gradient to their owners. ``wait``
    puts it in the autograd graph at the point where the rows are first used, so it runs
    as soon as their gradient is complete: autograd runs the ready node created last
    first, and a hook on the rows themselves would start the transfer only when the
    gather's own backward is about to wait for it, after everything computed between the
    gather and its use (the item projections, for the users' rows) has been
    back-propagated. So the transfer overlaps that backward.
    """

    def __init__(self, work: Any, rows: Tensor,
                 send_back: Callable[[Tensor], None] | None = None) -> None:
        self._work = work
        self._rows = rows
        self._send_back = send_back

    def wait(self) -> Tensor:
        if self._work is not None:
            self._work.wait()
            self._work = None
        if self._send_back is not None:
            if self._rows.requires_grad:
                self._rows = _SendBack.apply(self._rows, self._send_back)
            self._send_back = None
        return self._rows


class _SendBack(torch.autograd.Function):
    """The identity; its backward hands the gradient to ``send_back`` (which begins sending it
    to the rows' owners) and passes it on unchanged."""

    @staticmethod
    def forward(ctx: Any, rows: Tensor, send_back: Callable[[Tensor], None]) -> Tensor:  # type: ignore[override]
        ctx.send_back = send_back
        return rows.view_as(rows)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        ctx.send_back(grad)
        return grad, None


def _pad(local: Tensor, width: int) -> Tensor:
    """``local`` with zero rows appended up to ``width`` rows (no copy when it has them)."""
    if local.shape[0] == width:
        return local.contiguous()
    padded = local.new_empty((width, *local.shape[1:]))
    padded[: local.shape[0]] = local
    padded[local.shape[0]:] = 0
    return padded


class _GatherRows(torch.autograd.Function):
    """All-gather of up to ``width`` rows per rank, started asynchronously; backward: each rank's
    rows' gradient, summed.

    Rows are padded to ``width`` (gloo and nccl all-gather equal sizes) and land in one
    buffer, rank r's at r * width; the work handle goes to ``flight["work"]`` and the
    buffer must not be read before it is waited on (``PendingRows``). The backward
    uses the all-to-all that ``PendingRows``' send-back started (``flight["back"]``). It is a reduce-scatter
    written as an all-to-all (each rank sends every owner the gradient block of the
    owner's rows, then sums the N blocks it receives in rank order): on gloo over loopback
    that is faster than ``reduce_scatter_tensor``, and it sends 1/N of an all-reduce.
    """

    @staticmethod
    def forward(ctx: Any, local: Tensor, comm: TorchComm, width: int, flight: dict[str, Any]  # type: ignore[override]
                ) -> Tensor:
        padded = _pad(local, width)
        out = padded.new_empty((comm.world_size * width, *local.shape[1:]))
        flight["work"] = comm.start(comm.collectives.all_gather, out, padded)
        ctx.comm, ctx.width, ctx.n, ctx.flight = comm, width, local.shape[0], flight
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        comm, width = ctx.comm, ctx.width
        work, blocks = ctx.flight.pop("back", None) or comm._start_all_to_all(grad)
        work.wait()
        return blocks.view(comm.world_size, width, *grad.shape[1:]).sum(0)[: ctx.n], None, None, None


def _check_bounds(bounds: list[int], world_size: int, columns: int) -> None:
    if len(bounds) != world_size + 1 or bounds[0] != 0 or bounds[-1] != columns \
            or any(a > b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"column bounds {bounds} do not split {columns} columns over {world_size} ranks")


class _ColumnBlocks:
    """The all-to-alls of ``start_gather_columns``, on flat buffers (the blocks differ in size
    when the columns do not split evenly)."""

    @staticmethod
    def start(comm: TorchComm, send: Tensor, send_sizes: list[int], recv_sizes: list[int],
              received: Tensor | None = None) -> tuple[Any, Tensor]:
        """Begin one all-to-all of a flat buffer into ``received`` (a new flat buffer by default);
        returns (work, received)."""
        received = send.new_empty(sum(recv_sizes)) if received is None else received
        work = comm.start(lambda out, flat: comm.collectives.all_to_all(out, flat, recv_sizes, send_sizes),
                          received, send)
        return work, received

    @staticmethod
    def sizes(width: int, bounds: list[int]) -> list[int]:
        """Elements of each rank's block of ``width`` rows: [width * its columns] per rank."""
        return [width * (b - a) for a, b in zip(bounds, bounds[1:])]

    @staticmethod
    def send_back(comm: TorchComm, grad: Tensor, width: int, bounds: list[int]) -> tuple[Any, Tensor]:
        """The gradient of this rank's columns [world * width, c]: rank r's rows go back to r."""
        mine = _ColumnBlocks.sizes(width, bounds)[comm.rank]
        return _ColumnBlocks.start(comm, grad.contiguous().view(-1), [mine] * comm.world_size,
                                   _ColumnBlocks.sizes(width, bounds))


class _GatherColumns(torch.autograd.Function):
    """Rows held by their owners -> this rank's columns of every row, by one all-to-all (started
    asynchronously, ``flight["work"]``); backward: each block of the gradient back to the rows'
    owner, which reassembles its rows' columns (``flight["back"]``, started by ``PendingRows``' send-back)."""

    @staticmethod
    def forward(ctx: Any, local: Tensor, comm: TorchComm, width: int, bounds: list[int],  # type: ignore[override]
                flight: dict[str, Any]) -> Tensor:
        n = local.shape[0]
        send = local.new_empty(width * local.shape[1])
        for a, b in zip(bounds, bounds[1:]):  # rank k's block: [width, its columns], one copy of each row
            block = send[width * a: width * b].view(width, b - a)
            block[:n] = local[:, a:b]
            block[n:] = 0
        sizes = _ColumnBlocks.sizes(width, bounds)
        # the output is the buffer itself, not a view of a flat one: where the collective is
        # staged through host memory (gloo, GPU tensors) the result is copied into it after
        # this forward, and autograd refuses an in-place change to a custom Function's view
        out = local.new_empty((comm.world_size * width, bounds[comm.rank + 1] - bounds[comm.rank]))
        flight["work"], _ = _ColumnBlocks.start(comm, send, sizes, [sizes[comm.rank]] * comm.world_size, out.view(-1))
        ctx.comm, ctx.width, ctx.bounds, ctx.n, ctx.flight = comm, width, bounds, n, flight
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:  # type: ignore[override]
        comm, width, bounds = ctx.comm, ctx.width, ctx.bounds
        work, blocks = ctx.flight.pop("back", None) or _ColumnBlocks.send_back(comm, grad, width, bounds)
        work.wait()
        pieces = blocks.split(_ColumnBlocks.sizes(width, bounds))
        whole = torch.cat([p.view(width, b - a) for p, a, b in zip(pieces, bounds, bounds[1:])], dim=1)
        return whole[: ctx.n], None, None, None, None


class _Summed(torch.autograd.Function):
    """All-reduce (sum) forward and backward: every rank's loss reads the sum, so the gradient of
    each rank's addend is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, comm: TorchComm) -> Tensor:  # type: ignore[override]
        ctx.comm = comm
        return comm.all_reduce_(t.detach().clone())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return ctx.comm.all_reduce_(grad.clone(memory_format=torch.contiguous_format)), None


class _FetchRows(torch.autograd.Function):
    """Rows by all-to-all: owners send the asked rows; backward returns their gradients to the owners."""

    @staticmethod
    def forward(ctx: Any, local: Tensor, asked: Tensor, comm: TorchComm, send_counts: list[int],  # type: ignore[override]
                recv_counts: list[int]) -> Tensor:
        ctx.comm, ctx.send_counts, ctx.recv_counts, ctx.n_local = comm, send_counts, recv_counts, local.shape[0]
        ctx.save_for_backward(asked)
        return comm.all_to_all(local.index_select(0, asked), send_counts, recv_counts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:  # type: ignore[override]
        (asked,) = ctx.saved_tensors
        back = ctx.comm.all_to_all(grad, ctx.recv_counts, ctx.send_counts)
        # index_add_ sums duplicate rows in a fixed order on CPU (runs repeat bit for bit)
        total = back.new_zeros((ctx.n_local, *grad.shape[1:])).index_add_(0, asked, back)
        return total, None, None, None, None
