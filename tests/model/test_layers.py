"""The sparse product behind every propagation step, against dense algebra."""

from __future__ import annotations

import pytest
import torch

from margo_dist.graph.tensors import EdgeList
from torch.utils._python_dispatch import TorchDispatchMode

from margo_dist.model.layers import MLP, csr_product, propagate, residual_add


def _edges() -> EdgeList:
    # 3 dst x 4 src; dst 1 has no edge; (dst 0, src 2) appears twice and must add up
    src = torch.tensor([2, 0, 2, 3, 1])
    dst = torch.tensor([0, 2, 0, 2, 0])
    w = torch.tensor([0.5, 2.0, 0.25, -1.0, 3.0])
    return EdgeList(src, dst, w, n_dst=3, n_src=4)


def test_csr_product_matches_dense_with_duplicates_and_empty_rows():
    e = _edges()
    dense = torch.tensor([[0.0, 3.0, 0.75, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, -1.0]])
    assert torch.equal(e.csr.to_dense(), dense)
    assert torch.equal(e.csr_t.to_dense(), dense.t())
    x = torch.arange(8, dtype=torch.float32).view(4, 2)
    # by hand: row 0 = 3 * x1 + 0.75 * x2 = [6 + 3, 9 + 3.75]; row 2 = 2 * x0 - x3
    expected = torch.tensor([[9.0, 12.75], [0.0, 0.0], [-6.0, -5.0]])
    assert torch.equal(csr_product(e.csr, x), expected)


def test_propagate_gradient_is_the_transpose_product():
    e = _edges()
    x = torch.randn(4, 3, requires_grad=True)
    g = torch.randn(3, 3)
    (propagate(x, e) * g).sum().backward()
    assert torch.allclose(x.grad, e.csr.to_dense().t() @ g, atol=1e-6)


def test_csr_product_checks_the_inner_dimension():
    with pytest.raises(ValueError, match="x has 5 rows, the matrix has 4 columns"):
        csr_product(_edges().csr, torch.zeros(5, 2))


def test_rows_keeps_the_chosen_rows_in_the_given_order():
    e = EdgeList(torch.tensor([1, 2, 0, 3, 2]), torch.tensor([0, 0, 2, 2, 3]), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]),
                 n_dst=4, n_src=4)
    sub = e.rows(torch.tensor([3, 1, 0]))
    assert sub.n_dst == 3 and sub.n_src == 4 and sub.dst_in_src.tolist() == [3, 1, 0]
    assert torch.equal(sub.csr.to_dense(), e.csr.to_dense()[[3, 1, 0]])
    x = torch.randn(4, 2)
    assert torch.equal(sub.select_dst(x), x[[3, 1, 0]])
    with pytest.raises(ValueError, match="dst nodes are its first src nodes"):
        sub.rows(torch.tensor([0]))


@pytest.mark.parametrize(("where", "runs"), [([0, 1, 4, 5, 6], [(0, 2), (4, 3)]), ([2, 3, 4], [(2, 3)]),
                                             ([0, 1, 2, 3, 4, 5, 6], [(0, 7)]), ([0, 1, 6], [(0, 2), (6, 1)]),
                                             ([3, 4], [(0, 0), (3, 2)]), ([5, 2, 0], None)])
def test_residual_add_equals_selected_rows_plus_h_with_both_gradients(where, runs):
    where = torch.tensor(where)
    e = EdgeList(torch.tensor([0]), torch.tensor([0]), torch.ones(1), where.numel(), 7, where, dst_runs=runs)
    x = torch.randn(7, 3, requires_grad=True)
    h = torch.randn(where.numel(), 3, requires_grad=True)
    g = torch.randn(where.numel(), 3)
    out = residual_add(x, h, e)
    out.backward(g)
    assert torch.equal(out, x.detach()[where] + h.detach())
    assert torch.equal(x.grad, torch.zeros(7, 3).index_add_(0, where, g)) and torch.equal(h.grad, g)


def test_residual_add_refuses_runs_that_do_not_cover_h():
    e = EdgeList(torch.tensor([0]), torch.tensor([0]), torch.ones(1), 2, 5, torch.tensor([1, 2]), dst_runs=[(1, 2)])
    with pytest.raises(ValueError, match="the runs cover 2 rows, h has 3"):
        residual_add(torch.zeros(5, 2), torch.zeros(3, 2), e)


class _MatmulDtypes(TorchDispatchMode):
    """Records the operand dtypes of every matrix product that reaches the kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in ("mm", "addmm", "bmm", "linear"):
            self.seen.append((func.__name__, args[1].dtype))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16, torch.float16])
def test_a_bfloat16_projection_multiplies_in_bf16_and_hands_float32_on(stored):
    f = torch.randn(9, 6).to(stored)
    exact = MLP(6, 8, 4, torch.Generator().manual_seed(0))
    low = MLP(6, 8, 4, torch.Generator().manual_seed(0), compute_dtype=torch.bfloat16)
    with _MatmulDtypes() as rec:
        out = low(f)
        out.square().sum().backward()
    forward = [d for name, d in rec.seen if name.startswith("addmm")]
    assert forward and set(forward) == {torch.bfloat16}  # both products, in bf16
    assert out.dtype == torch.float32 and low.w1.dtype == torch.float32 and low.w1.grad.dtype == torch.float32
    ref = exact(f)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.02)
    torch.testing.assert_close(low.w1.grad, exact.w1.grad, rtol=0.1, atol=0.05)
    assert not torch.equal(out, ref)  # it did round


def test_a_float32_projection_is_the_formula_bit_for_bit():
    mlp = MLP(6, 8, 4, torch.Generator().manual_seed(0))
    f = torch.randn(9, 6)
    with _MatmulDtypes() as rec:
        out = mlp(f)
    assert {d for _, d in rec.seen} == {torch.float32}
    linear = torch.nn.functional.linear
    assert torch.equal(out, linear(torch.nn.functional.leaky_relu(linear(f, mlp.w1, mlp.b1)), mlp.w2, mlp.b2))
