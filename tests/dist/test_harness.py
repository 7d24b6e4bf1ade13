"""The harness itself: results come back per rank, a failing worker is reported with its rank."""

from __future__ import annotations

import pytest
import torch

from margo_dist.dist.comm import TorchComm

from margo_dist.dist.processes import run_workers


def gather_and_reduce(rank: int, world: int) -> tuple[list[float], float, list[float]]:
    comm = TorchComm()
    local = torch.full((rank + 1, 2), float(rank + 1), requires_grad=True)
    padded = comm.start_gather(local, 2).wait()  # rank 0 has 1 row, rank 1 has 2: blocks of 2 rows
    rows = padded.index_select(0, torch.tensor([0, 2, 3]))
    (rows * torch.arange(1.0, rows.shape[0] + 1).unsqueeze(1)).sum().backward()
    total = comm.all_reduce_(torch.tensor([float(rank)]))
    return rows[:, 0].tolist(), float(total), local.grad[:, 0].tolist()


def fail_on_one(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("planted failure")


def test_gathered_rows_and_their_gradient_across_two_processes():
    results = run_workers(gather_and_reduce, 2)
    for rows, total, _ in results:
        assert rows == [1.0, 2.0, 2.0] and total == 1.0
    # the gathered row k is weighted by k + 1 on each of the 2 ranks: the owner gets 2 * (k + 1)
    assert results[0][2] == [2.0]
    assert results[1][2] == [4.0, 6.0]


def test_a_failing_worker_is_named():
    with pytest.raises(RuntimeError, match="worker 1 failed"):
        run_workers(fail_on_one, 2)
