"""Edge-list plumbing: the row sort, the row form of grouped edges, residuals by runs."""

from __future__ import annotations

import pytest
import torch

from margo_dist.graph.tensors import CSR, EdgeList, stable_order


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


def test_dst_runs_must_describe_dst_in_src_and_travel_with_the_edge_list():
    where = torch.tensor([0, 1, 2, 5, 6])
    e = EdgeList(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.ones(2), 5, 7, where, dst_runs=[(0, 3), (5, 2)])
    assert e.to("meta").dst_runs == [(0, 3), (5, 2)]
    x = torch.randn(7, 3)
    assert torch.equal(e.select_dst(x), x[where])
    with pytest.raises(ValueError, match="do not describe dst_in_src"):
        EdgeList(torch.tensor([0]), torch.tensor([0]), torch.ones(1), 5, 7, where, dst_runs=[(0, 3)])
    with pytest.raises(ValueError, match="do not describe dst_in_src"):
        EdgeList(torch.tensor([0]), torch.tensor([0]), torch.ones(1), 2, 7, dst_runs=[(0, 2)])
