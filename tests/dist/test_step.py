"""The step plan: each worker's share of a step, its regularised rows and its users add up to the whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from margo_dist.dist.comm import LocalComm
from margo_dist.dist.sharding import Placement
from margo_dist.model.placement import LocalPlacement
from margo_dist.dist.step import StepPlan
from margo_dist.graph.tensors import full_graph
from tests.model.test_margo import N_ITEMS, N_USERS, tiny_artifacts

USER_OWNER = np.array([1, 0, 1, 0])
ITEM_OWNER = np.array([0, 0, 1, 1, 0])
STEP = (np.array([0, 1, 2, 3, 0]), np.array([0, 1, 3, 4, 1]), np.array([2, 4, 4, 0, 3]))


class Worker(LocalComm):
    """Worker ``rank`` of two, for the plan's bookkeeping (no collective is run here)."""

    def __init__(self, rank: int) -> None:
        self.rank, self.world_size = rank, 2

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


def plans() -> list[StepPlan]:
    out = []
    for rank in range(2):
        comm = Worker(rank)
        out.append(StepPlan(comm, Placement(comm, USER_OWNER, ITEM_OWNER)))
    return out


def whole_graph():
    return full_graph(tiny_artifacts(), ["image", "text"], {"image": 0.5, "text": 0.5}).compute_graph(2)


def test_local_plan_takes_every_triplet_and_regularises_the_batchs_own_rows():
    plan = StepPlan(LocalComm(), LocalPlacement(N_USERS, N_ITEMS))
    (batch,) = plan.whole_graph_batches(whole_graph(), [STEP])
    assert batch.users[batch.loss_rows].tolist() == STEP[0].tolist() and batch.step_triplets == 5
    users, items = batch.regularised()
    assert users.tolist() == STEP[0].tolist() and items.tolist() == STEP[1].tolist() + STEP[2].tolist()
    assert plan.ranked_users(np.arange(4)).tolist() == [0, 1, 2, 3]


def test_the_workers_loss_shares_and_regularised_rows_partition_the_whole_graph_step():
    batches = [next(p.whole_graph_batches(whole_graph(), [STEP])) for p in plans()]
    taken = sorted(k for b in batches for k in range(5)[b.loss_rows])
    assert taken == list(range(5))  # every triplet's loss once, over the workers
    assert all(b.step_triplets == 5 and b.users.tolist() == STEP[0].tolist() for b in batches)
    reg_users = sorted(u for b in batches for u in b.regularised()[0].tolist())
    reg_items = sorted(i for b in batches for i in b.regularised()[1].tolist())
    assert reg_users == sorted(STEP[0].tolist())
    assert reg_items == sorted(STEP[1].tolist() + STEP[2].tolist())
    for rank, b in enumerate(batches):  # each worker regularises only rows it holds
        assert set(USER_OWNER[b.regularised()[0].numpy()]) <= {rank}
        assert set(ITEM_OWNER[b.regularised()[1].numpy()]) <= {rank}


def test_sampled_shares_split_the_triplets_by_user_owner_and_the_items_by_item_owner():
    shares = [p.sampled_shares([STEP])[0] for p in plans()]
    users = sorted(u for s in shares for u in s[0].tolist())
    assert users == sorted(STEP[0].tolist())
    for rank, (u, i, j, items) in enumerate(shares):
        assert set(USER_OWNER[u]) <= {rank} and set(ITEM_OWNER[items]) <= {rank}
        assert len(u) == len(i) == len(j)
    assert sorted(np.concatenate([s[3] for s in shares]).tolist()) == sorted(set(STEP[1]) | set(STEP[2]))


def test_each_evaluated_user_is_ranked_by_one_worker():
    ranked = [p.ranked_users(np.arange(4)).tolist() for p in plans()]
    assert ranked == [[1, 3], [0, 2]]


def test_feature_rows_of_another_owner_are_refused():
    plan = plans()[0]
    rows = [torch.arange(10.0).view(5, 2)]
    assert plan.own_feature_rows(rows, None, 5)[0][:, 0].tolist() == [0.0, 2.0, 8.0]
    with pytest.raises(ValueError, match="not the 3 this worker owns"):
        plan.own_feature_rows(rows, torch.tensor([2, 3]), 5)
