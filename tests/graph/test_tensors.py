"""Edge-list plumbing: the row sort, the row form of grouped edges, residuals by runs."""

from __future__ import annotations

import pytest
import torch

from margo_dist.graph.tensors import CSR, EdgeList, contiguous_runs, stable_order


@pytest.mark.parametrize("n_keys", [1, 7, 65536, 65537, 300_000, 1 << 33])
def test_stable_order_is_a_stable_argsort(n_keys):
    g = torch.Generator().manual_seed(n_keys % 1000)
    keys = torch.randint(0, n_keys, (5000,), generator=g)
    keys[:100] = keys[100:200]  # ties, whose original order must be kept
    assert torch.equal(stable_order(keys, n_keys), torch.argsort(keys, stable=True))


def test_from_coo_keeps_grouped_edges_and_sorts_others():
    rows = torch.tensor([0, 0, 1, 3, 3])
    cols = torch.tensor([4, 2, 0, 1, 3])
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    grouped = CSR.from_coo(rows, cols, w, 4, 5)
    assert grouped.indptr.tolist() == [0, 2, 3, 3, 5] and grouped.indices.tolist() == [4, 2, 0, 1, 3]
    perm = torch.tensor([4, 1, 2, 3, 0])
    shuffled = CSR.from_coo(rows[perm], cols[perm], w[perm], 4, 5)
    assert torch.equal(shuffled.indptr, grouped.indptr)
    assert torch.equal(shuffled.to_dense(), grouped.to_dense())
    assert shuffled.indices.tolist() == [2, 4, 0, 3, 1]  # ties keep their order in the input


def test_contiguous_runs():
    assert contiguous_runs(torch.tensor([0, 1, 2, 5, 6])) == [(0, 3), (5, 2)]
    assert contiguous_runs(torch.tensor([4, 5])) == [(4, 2)]
    assert contiguous_runs(torch.tensor([3, 1, 0])) is None  # not ascending
    assert contiguous_runs(torch.tensor([4, 5, 0, 1])) is None
    assert contiguous_runs(torch.tensor([0, 2, 4, 6, 8])) is None  # too many runs
    assert contiguous_runs(torch.tensor([], dtype=torch.int64)) is None


@pytest.mark.parametrize("where", [[0, 1, 2, 5, 6], [2, 3], [0, 1, 2, 3, 4, 5, 6], [1, 4, 6], [3, 1, 0]])
def test_select_dst_by_runs_equals_the_gather_with_its_gradient(where):
    where = torch.tensor(where)
    e = EdgeList(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.ones(2), where.numel(), 7, where)
    assert (e.dst_runs is None) == (where.tolist() == [3, 1, 0])
    x = torch.randn(7, 3, requires_grad=True)
    grad = torch.randn(where.numel(), 3)
    out = e.select_dst(x)
    out.backward(grad)
    expected = torch.zeros(7, 3).index_add_(0, where, grad)
    assert torch.equal(out, x.detach()[where]) and torch.equal(x.grad, expected)
    moved = e.to("meta")
    assert moved.dst_runs == e.dst_runs
