"""Row placement across real processes: fetched and gathered rows, and their gradients at the owners."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from margo_dist.dist.comm import TorchComm
from margo_dist.dist.processes import run_workers
from margo_dist.dist.sharding import ITEM, Placement
from margo_dist.model.placement import LocalPlacement

OWNER = np.array([2, 0, 1, 0, 2, 1, 1])  # 7 items over 3 ranks, interleaved
ASKED = {0: [6, 0, 6, 3], 1: [], 2: [1, 1, 5, 6]}  # repeats, a row two ranks ask for, none at all


def whole_rows() -> torch.Tensor:
    """The 7 x 2 table as local mode holds it: row i is (10 i, 10 i + 1)."""
    return torch.arange(7.0).unsqueeze(1) * 10 + torch.tensor([0.0, 1.0])


def fetch_and_gather(rank: int, world: int) -> dict[str, list]:
    placement = Placement(TorchComm(), np.zeros(1, np.int64), OWNER)
    own_ids = placement.owned(ITEM)
    local = whole_rows().index_select(0, own_ids).requires_grad_()
    ids = torch.tensor(ASKED[rank], dtype=torch.int64)
    fetched = placement.fetch(ITEM, local, ids)
    gathered = placement.gather(ITEM, local)
    # each use of a fetched row weighs (rank + 1) * (position + 1); each gathered row i weighs i
    weights = (rank + 1) * torch.arange(1.0, ids.numel() + 1).unsqueeze(1)
    ((fetched * weights).sum() + (gathered * torch.arange(7.0).unsqueeze(1)).sum()).backward()
    return {"own": own_ids.tolist(), "fetched": fetched.tolist(), "gathered": gathered.tolist(),
            "grad": local.grad[:, 0].tolist()}


def test_fetched_and_gathered_rows_equal_the_whole_table_and_their_gradients_reach_the_owner():
    results = run_workers(fetch_and_gather, 3)
    whole = whole_rows()
    expected_grad = torch.zeros(7)
    for rank, ids in ASKED.items():
        for k, i in enumerate(ids):
            expected_grad[i] += (rank + 1) * (k + 1)
    expected_grad += 3 * torch.arange(7.0)  # every one of the 3 ranks gathered every row
    for rank, got in enumerate(results):
        assert got["own"] == np.flatnonzero(OWNER == rank).tolist()
        assert got["fetched"] == whole[torch.tensor(ASKED[rank], dtype=torch.int64)].tolist()
        assert got["gathered"] == whole.tolist()
        assert got["grad"] == expected_grad[got["own"]].tolist()


def own_and_small_lookups(rank: int, world: int) -> dict:
    from margo_dist.model.tables import TableSpec

    placement = Placement(TorchComm(), np.zeros(1, np.int64), OWNER)
    table = placement.table(TableSpec("theta", 7, 2, 1.0, 0), ITEM)  # 56 bytes: looked up by a whole gather
    whole = TableSpec("theta", 7, 2, 1.0, 0).rows()
    own = placement.owned(ITEM)
    out = {"own": table.lookup_own(own.flip(0)).tolist() == whole[own.flip(0)].tolist(),
           "small": table.lookup(torch.tensor([6, 0, 6])).tolist() == whole[[6, 0, 6]].tolist()}
    foreign = torch.tensor([int(np.flatnonzero(OWNER != rank)[0])])
    try:
        table.lookup_own(foreign)
        out["refused"] = False
    except ValueError as exc:
        out["refused"] = "does not hold" in str(exc)
    return out


def test_own_rows_need_no_peer_and_a_row_held_elsewhere_is_refused():
    assert run_workers(own_and_small_lookups, 3) == [{"own": True, "small": True, "refused": True}] * 3


WIDE = torch.arange(7 * 5, dtype=torch.float64).view(7, 5)  # 5 columns: blocks of 1, 2 and 2 over 3 ranks


def gather_columns(rank: int, world: int) -> dict:
    """Each rank holds its own rows of WIDE and gets every row's block of its columns; the loss
    weighs entry (i, c) by (rank + 1) * (i + 1) * (c + 1)."""
    placement = Placement(TorchComm(), np.zeros(1, np.int64), OWNER)
    own = placement.owned(ITEM)
    local = WIDE.index_select(0, own).requires_grad_()
    bounds = placement.columns(5)
    start, stop = bounds[rank], bounds[rank + 1]
    block = placement.start_gather_columns(ITEM, local).wait()
    weights = (rank + 1) * torch.arange(1.0, 8.0, dtype=torch.float64).unsqueeze(1) \
        * torch.arange(start + 1.0, stop + 1.0, dtype=torch.float64)
    (block * weights).sum().backward()
    return {"bounds": bounds, "block": block.tolist(), "own": own.tolist(), "grad": local.grad.tolist()}


def test_a_column_gather_gives_each_rank_its_columns_of_every_row_and_each_owner_its_rows_gradient():
    results = run_workers(gather_columns, 3)
    for rank, got in enumerate(results):
        assert got["bounds"] == [0, 1, 3, 5]
        start, stop = got["bounds"][rank], got["bounds"][rank + 1]
        assert got["block"] == WIDE[:, start:stop].tolist()
    # entry (i, c) was read by the rank holding column c only: its gradient is that rank's weight
    expected = torch.zeros(7, 5, dtype=torch.float64)
    for rank in range(3):
        start, stop = results[0]["bounds"][rank], results[0]["bounds"][rank + 1]
        for c in range(start, stop):
            expected[:, c] = (rank + 1) * torch.arange(1.0, 8.0, dtype=torch.float64) * (c + 1)
    for got in results:
        assert got["grad"] == expected[got["own"]].tolist()


def summed_and_its_gradient(rank: int, world: int) -> dict:
    comm = TorchComm()
    part = torch.tensor([1.0, 2.0], dtype=torch.float64) * (rank + 1)
    part.requires_grad_()
    total = comm.summed(part)
    (total * torch.tensor([3.0, 5.0], dtype=torch.float64) * (rank + 1)).sum().backward()
    return {"total": total.tolist(), "grad": part.grad.tolist()}


def test_summed_parts_and_the_gradient_of_each_part_is_every_ranks_gradient_of_the_sum():
    # ranks' parts (1, 2) and (2, 4); rank r's loss weighs the sum by (r + 1) * (3, 5)
    assert run_workers(summed_and_its_gradient, 2) == [{"total": [3.0, 6.0], "grad": [9.0, 15.0]}] * 2


def test_column_bounds_that_do_not_split_the_columns_are_refused():
    from margo_dist.dist.comm import LocalComm

    with pytest.raises(ValueError, match="do not split 4 columns"):
        LocalComm().start_gather_columns(torch.zeros(3, 4), 3, [0, 3])


FEATURES = torch.arange(7 * 3, dtype=torch.float64).view(7, 3) / 10  # raw rows of the 7 items


def projected_fetch(rank: int, world: int) -> dict:
    """Each owner projects only the rows asked of it, once, however many ranks ask for them."""
    placement = Placement(TorchComm(), np.zeros(1, np.int64), OWNER)
    own_ids = placement.owned(ITEM)
    own_features = FEATURES.index_select(0, own_ids)
    torch.manual_seed(0)  # the same replicated projection on every rank
    projection = torch.nn.Linear(3, 2, dtype=torch.float64)
    computed: list[int] = []

    def project(local_rows: torch.Tensor) -> torch.Tensor:
        computed.extend(own_ids[local_rows].tolist())
        return projection(own_features.index_select(0, local_rows))

    ids = torch.tensor(ASKED[rank], dtype=torch.int64)
    rows = placement.fetch_computed(ITEM, ids, project)
    weights = (rank + 1) * torch.arange(1.0, ids.numel() + 1, dtype=torch.float64).unsqueeze(1)
    (rows * weights).sum().backward()
    return {"rows": rows.tolist(), "computed": sorted(computed), "grad": projection.weight.grad.tolist(),
            "counted": (placement.rows_asked, placement.rows_computed)}


def test_owners_project_each_asked_row_once_and_the_projection_gets_every_requesters_gradient():
    results = run_workers(projected_fetch, 3)
    torch.manual_seed(0)
    projection = torch.nn.Linear(3, 2, dtype=torch.float64)
    whole = projection(FEATURES)
    loss = sum(((rank + 1) * torch.arange(1.0, len(ids) + 1, dtype=torch.float64).unsqueeze(1)
                * whole[torch.tensor(ids, dtype=torch.int64)]).sum() for rank, ids in ASKED.items() if ids)
    loss.backward()
    summed = sum(torch.tensor(r["grad"], dtype=torch.float64) for r in results)  # all-reduced, as the trainer does
    assert torch.allclose(summed, projection.weight.grad, rtol=1e-12, atol=1e-12)
    asked_of = {r: sorted({i for ids in ASKED.values() for i in ids if OWNER[i] == r}) for r in range(3)}
    for rank, got in enumerate(results):
        assert torch.allclose(torch.tensor(got["rows"], dtype=torch.float64).view(-1, 2),
                              whole.detach()[torch.tensor(ASKED[rank], dtype=torch.int64)].view(-1, 2))
        # item 6 is asked by ranks 0 and 2 (and twice by rank 0) but its owner projects it once
        assert got["computed"] == asked_of[rank], (rank, got["computed"])
        # the benchmarks' counters: distinct rows asked of other owners, rows computed here
        others = {i for i in ASKED[rank] if OWNER[i] != rank}
        assert got["counted"] == (len(others), len(asked_of[rank])), rank


def test_in_one_process_computed_rows_are_the_function_of_the_asked_ids():
    placement = LocalPlacement(1, 7)
    seen: list[list[int]] = []

    def double(rows: torch.Tensor) -> torch.Tensor:
        seen.append(rows.tolist())
        return FEATURES.index_select(0, rows) * 2

    ids = torch.tensor([[6, 0], [6, 3]])
    out = placement.fetch_computed(ITEM, ids, double)
    assert out.shape == (2, 2, 3) and torch.equal(out, FEATURES[ids] * 2)
    assert seen == [[0, 3, 6]]  # each distinct row once
    assert (placement.rows_asked, placement.rows_computed) == (0, 3)


def gradient_sent_before_the_work_in_between(rank: int, world: int) -> list[str]:
    """Rows gathered while something else is computed (as the users' rows travel while the items
    are projected): the order in which the backward sends their gradient and runs that work."""
    from margo_dist.dist import comm as comm_module

    events: list[str] = []
    send_back = comm_module._ColumnBlocks.send_back

    def recorded(comm: TorchComm, grad: torch.Tensor, width: int, bounds: list[int]):
        events.append("gradient sent")
        return send_back(comm, grad, width, bounds)

    comm_module._ColumnBlocks.send_back = staticmethod(recorded)  # this worker process only

    class InBetween(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            events.append("work in between")
            return grad * 2

    placement = Placement(TorchComm(), np.zeros(1, np.int64), OWNER)
    local = WIDE.index_select(0, placement.owned(ITEM)).requires_grad_()
    pending = placement.start_gather_columns(ITEM, local)
    other = InBetween.apply(torch.ones(3, dtype=torch.float64, requires_grad=True))
    block = pending.wait()
    (block.sum() + other.sum()).backward()
    return events


def test_a_gathered_rows_gradient_travels_while_the_backward_of_the_work_in_between_runs():
    # a hook on the gathered rows would send only once the gather's own backward is due, after
    # the work in between: the transfer would not overlap it
    assert run_workers(gradient_sent_before_the_work_in_between, 3) == [["gradient sent", "work in between"]] * 3
