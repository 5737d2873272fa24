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


@pytest.mark.parametrize("backend", [b for b in nat.available_backends("cpu") if b != "reference"])
def test_opcheck_window_covering_the_input(backend):
    """NAT-Tiny's last level (7 x 7 map, kernel 7) takes the fused dense path: its log-sum-exp
    must have the dense layout the fake declares (Inductor asserts it in compiled training)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 7, 4, 32, generator=g, requires_grad=True) for _ in "qkv")
    rpb = torch.randn(4, 13, 13, generator=g, requires_grad=True)
    args = (q, k, v, rpb, [7, 7], [1, 1], [1, 1], [False, False], 0.25, backend, True)
    torch.library.opcheck(torch.ops.nat.na_forward.default, args)


@pytest.mark.parametrize("backend", [b for b in nat.available_backends("cpu") if b != "reference"])
@pytest.mark.parametrize("head_dim", [4, 32])
@pytest.mark.parametrize("spatial", [(6, 7), (3, 3)])
def test_opcheck_backward(backend, head_dim, spatial):
    """The backward op's outputs (head-major strided gradients) match its fake function."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, *spatial, 2, head_dim, generator=g) for _ in "qkv")
    rpb = torch.randn(2, 5, 5, generator=g)
    window = ([3, 3], [1, 1], [1, 1], [False, False], 0.5, backend)
    out, lse = torch.ops.nat.na_forward(q, k, v, rpb, *window, True)
    args = (torch.randn_like(out), q, k, v, rpb, out, lse, *window)
    torch.library.opcheck(torch.ops.nat.na_backward.default, args)


@pytest.mark.parametrize("backend", [b for b in nat.available_backends("cpu") if b != "reference"])
def test_opcheck_grouped_heads_and_lse_gradient(backend):
    """Key/value with half the query's heads, and a gradient reaching the log-sum-exp."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 7, 4, 8, generator=g)
    k, v = (torch.randn(2, 6, 7, 2, 8, generator=g) for _ in "kv")
    window = ([3, 3], [1, 1], [1, 2], [False, False], 0.5, backend)
    out, lse = torch.ops.nat.na_forward(q, k, v, None, *window, True)
    assert out.shape == q.shape
    args = (torch.randn_like(out), q, k, v, None, out, lse, *window, torch.randn_like(lse))
    torch.library.opcheck(torch.ops.nat.na_backward.default, args)


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


def test_compile_fullgraph_grouped_heads_lse_and_extra_tokens():
    """GQA, return_lse and additional tokens trace as one graph and differentiate as in eager."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 7, 4, 8, generator=g, requires_grad=True)
    k, v = (torch.randn(2, 6, 7, 2, 8, generator=g, requires_grad=True) for _ in "kv")
    extra = torch.randn(2, 3, 2, 8, generator=g, requires_grad=True)

    def fn(q, k, v, extra):
        out, lse = nat.na2d(
            q, k, v, 3, dilation=2, additional_keys=extra, additional_values=extra, return_lse=True
        )
        return out.sin().sum() + lse.cos().sum()

    inputs = (q, k, v, extra)
    expected = torch.autograd.grad(fn(*inputs), inputs)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(*inputs), inputs)
    for g_, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g_, e)


@pytest.mark.parametrize("head_dim", [4, 32])
def test_inductor_backward_matches_eager(head_dim):
    """Inductor checks every output's strides against the fake functions, gradients included."""
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 7, 9, 3, 2, head_dim, generator=g, requires_grad=True)
    rpb = torch.randn(2, 9, 9, generator=g, requires_grad=True)

    def fn(qkv, rpb):
        q, k, v = qkv.unbind(3)
        return nat.na2d(q, k, v, 5, rpb=rpb).sin().sum()

    expected = torch.autograd.grad(fn(qkv, rpb), (qkv, rpb))
    grads = torch.autograd.grad(torch.compile(fn, fullgraph=True)(qkv, rpb), (qkv, rpb))
    for g_, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g_, e)


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


def test_flop_counter_sees_inference_calls_too():
    """Eager inference skips the op's dispatch, but never while a mode such as this one watches."""
    q = torch.randn(1, 9, 9, 2, 8)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        nat.na2d(q, q, q, 3)
    assert counter.get_total_flops() == expected_flops(1, (9, 9), 2, 8, 8, (3, 3))


@pytest.mark.parametrize("autocast", [False, True])
def test_eager_inference_skips_the_op_dispatch_under_autocast_too(monkeypatch, autocast):
    """Same result as through the op, in autocast's dtype, without going through the op."""
    from nat.ops import dispatch

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 9, 9, 2, 32, generator=g) for _ in "qkv")
    rpb = torch.randn(2, 5, 5, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with FlopCounterMode(display=False):  # a dispatch mode: the op itself runs
            through_op = nat.na2d(q, k, v, 3, rpb=rpb)
        monkeypatch.setattr(dispatch, "_na_forward", None)  # any call through the op would fail
        with torch.no_grad():
            direct = nat.na2d(q, k, v, 3, rpb=rpb)
    assert direct.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert torch.equal(direct, through_op)
