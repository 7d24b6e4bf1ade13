"""Row placement across real processes: fetched and gathered rows, and their gradients at the owners."""

from __future__ import annotations

import numpy as np
import torch

from margo_dist.dist.comm import TorchComm
from margo_dist.dist.processes import run_workers
from margo_dist.dist.sharding import ITEM, Placement

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
