"""The operator as PyTorch sees it: torch.library checks, torch.compile, FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import nat


def op_args(rpb: bool, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 6, 7, 2, 4, generator=g, dtype=dtype) for _ in "qk")
    v = torch.randn(2, 6, 7, 2, 5, generator=g, dtype=dtype)
    bias = torch.randn(2, 5, 5, generator=g, dtype=dtype) if rpb else None
    return (q, k, v, bias, [3, 3], [1, 1], [2, 1], [False, False], 0.5, "torch", True)


@pytest.mark.parametrize("rpb", [True, False])
def test_opcheck(rpb):
    args = op_args(rpb)
    for t in args[:4]:
        if t is not None:
            t.requires_grad_()
    torch.library.opcheck(torch.ops.nat.na_forward.default, args)


def test_compile_fullgraph_matches_eager_forward_and_backward():
    torch.manual_seed(0)
    module = nat.NeighborhoodAttention2D(16, 2, 3, dilation=2)
    x = torch.randn(2, 9, 8, 16, requires_grad=True)
    expected = module(x)
    expected.square().sum().backward()
    grads = [x.grad.clone(), module.rpb.grad.clone()]
    x.grad = None
    module.zero_grad()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(x.grad, grads[0])
    torch.testing.assert_close(module.rpb.grad, grads[1])


def test_compile_with_inductor_traces_without_graph_breaks():
    def fn(q, k, v, rpb):
        return nat.na2d(q.sin(), k, v, (3, 3), rpb=rpb).cos()

    q, k, v, rpb = op_args(True)[:4]
    explanation = torch._dynamo.explain(fn)(q, k, v, rpb)
    assert explanation.graph_break_count == 0
    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(q, k, v, rpb), fn(q, k, v, rpb))


def expected_flops(batch, spatial, heads, dim, dim_v, kernel):
    tokens = torch.tensor(spatial).prod().item()
    return 2 * batch * heads * tokens * torch.tensor(kernel).prod().item() * (dim + dim_v)


@pytest.mark.parametrize(
    ("spatial", "kernel", "stride", "dilation", "causal"),
    [
        ((11,), (3,), (1,), (2,), (False,)),
        ((6, 7), (3, 2), (1, 2), (1, 1), (True, False)),
        ((3, 4, 5), (2, 3, 3), (1, 1, 1), (1, 1, 1), (False, False, False)),
    ],
)
def test_flop_counter_counts_the_spec_cost(spatial, kernel, stride, dilation, causal):
    q = torch.randn(2, *spatial, 3, 4, requires_grad=True)
    k = torch.randn(2, *spatial, 3, 4)
    v = torch.randn(2, *spatial, 3, 6)
    with FlopCounterMode(display=False) as counter:
        out = nat.neighborhood_attention(q, k, v, kernel, stride, dilation, causal)
    forward = expected_flops(2, spatial, 3, 4, 6, kernel)
    assert counter.get_total_flops() == forward
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_flop_counts()["Global"][torch.ops.nat.na_backward] == 2 * forward
