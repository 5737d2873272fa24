"""q, k and v packed as one projection ``[B, *spatial, 3, heads, D]`` (``na_packed_op``).

The modules call the operator this way, so that in training the projection's gradient comes back
as one tensor (written in place by the CPU kernel) instead of three that autograd stacks.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import nat
from nat.ops import cpu
from nat.ops.dispatch import na_op, na_packed_op
from nat.ops.spec import NAParams, neighbor_table

CPU_BACKENDS = [b for b in nat.available_backends("cpu") if b != "reference"]
needs_kernel = pytest.mark.skipif(not cpu.is_available(), reason="the CPU kernel is not built")

# (spatial, kernel, stride, dilation, causal, head_dim)
PROBLEMS = {
    "2d rpb": ((9, 11), (3, 5), (1, 1), (1, 2), (False, False), 16),
    "2d causal": ((7, 8), (3, 3), (1, 1), (1, 1), (True, False), 32),
    "2d strided": ((10, 9), (5, 3), (2, 1), (1, 1), (False, False), 32),
    "2d covering": ((7, 7), (7, 7), (1, 1), (1, 1), (False, False), 32),
    "1d": ((20,), (5,), (1,), (3,), (False,), 64),
    "3d": ((4, 5, 6), (3, 3, 3), (1, 1, 1), (1, 1, 1), (False, False, False), 16),
    "head_dim 8 (stacked)": ((6, 7), (3, 3), (1, 1), (1, 1), (False, False), 8),
}
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def make(problem, dtype, rpb=True, seed=0):
    spatial, kernel, stride, dilation, causal, head_dim = problem
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(2, *spatial, 3, 2, head_dim, generator=g).to(dtype).requires_grad_()
    shape = (2, *(2 * k - 1 for k in kernel))
    bias = torch.randn(shape, generator=g).to(dtype).requires_grad_() if rpb else None
    params = NAParams(kernel, stride, dilation, causal, head_dim**-0.5)
    return qkv, bias, params


def run(fn, qkv, bias):
    """Output and gradients (qkv, rpb) of ``fn(qkv, bias)`` under a fixed output gradient."""
    out = fn(qkv, bias)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    inputs = [t for t in (qkv, bias) if t is not None]
    return (out, *torch.autograd.grad(out, inputs, grad))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", PROBLEMS)
def test_packed_call_equals_three_tensor_call(backend, dtype, name):
    """Bit for bit: the same kernels run, only where the gradient is written differs."""
    qkv, bias, params = make(PROBLEMS[name], dtype)
    got = run(lambda t, b: na_packed_op(t, b, params, backend), qkv, bias)
    want = run(lambda t, b: na_op(*t.unbind(-3), b, params, backend), qkv, bias)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g, w)


@pytest.mark.parametrize("name", ["2d rpb", "1d", "head_dim 8 (stacked)"])
def test_packed_call_matches_the_reference(name):
    qkv, bias, params = make(PROBLEMS[name], torch.float64)
    got = run(lambda t, b: na_packed_op(t.float(), b.float(), params), qkv, bias)
    want = run(lambda t, b: na_op(*t.unbind(-3), b, params, "reference"), qkv, bias)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5)


def test_packed_call_under_autocast_casts_like_the_three_tensor_call():
    qkv, bias, params = make(PROBLEMS["2d rpb"], torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run(lambda t, b: na_packed_op(t, b, params), qkv, bias)
        want = run(lambda t, b: na_op(*t.unbind(-3), b, params), qkv, bias)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def kernel_backward_args(name, dtype, rpb=True, dlse=False):
    """Problem ``name`` packed as ``[B, N, 3, heads, D]`` for the kernel, and the arguments of
    its ``na_backward`` up to (not including) ``dqkv``."""
    spatial = PROBLEMS[name][0]
    qkv, bias, params = make(PROBLEMS[name], dtype, rpb=rpb)
    qkv = qkv.detach().flatten(1, len(spatial))
    q, k, v = qkv.unbind(2)
    nbr, valid, bidx = neighbor_table(spatial, params, qkv.device)
    rows = None if bias is None else bias.detach().flatten(1)
    out, lse, _ = cpu.load().na_forward(q, k, v, rows, nbr, bidx, valid, params.scale)
    grad_lse = torch.randn_like(lse) if dlse else None
    args = (torch.randn_like(out), q, k, v, rows, out, lse, nbr, bidx, valid, grad_lse)
    return qkv, (*args, params.scale)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_writes_the_packed_gradient_in_place(dtype):
    """The kernel's dqkv argument: the same gradients as its head-major ones, and lse's too."""
    qkv, args = kernel_backward_args("2d causal", dtype, dlse=True)
    dq, dk, dv, drpb = cpu.load().na_backward(*args, None)
    dqkv = torch.full_like(qkv, float("nan"))
    packed = cpu.load().na_backward(*args, dqkv)
    assert torch.equal(dqkv, torch.stack([g.transpose(1, 2) for g in (dq, dk, dv)], dim=2))
    assert all(p.data_ptr() == dqkv[:, :, i].data_ptr() for i, p in enumerate(packed[:3]))
    assert torch.equal(packed[3], drpb)


@needs_kernel
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t[:, :-1], r"dqkv has shape \[2, 55, 3, 2, 32\]; expected \[2, 56, 3, 2, 32\]"),
        (lambda t: t.half(), r"dqkv has dtype Half; expected Float"),
        (lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2), r"dqkv has strides"),
    ],
)
def test_kernel_refuses_a_bad_packed_gradient(change, message):
    qkv, args = kernel_backward_args("2d causal", torch.float32, rpb=False)
    with pytest.raises(RuntimeError, match=message):
        cpu.load().na_backward(*args, change(torch.empty_like(qkv)))


@needs_kernel
def test_kernel_refuses_a_packed_gradient_off_its_vector_path():
    qkv, args = kernel_backward_args("head_dim 8 (stacked)", torch.float32, rpb=False)
    with pytest.raises(RuntimeError, match=r"dqkv needs the vector path .* D=8"):
        cpu.load().na_backward(*args, torch.empty_like(qkv))


@pytest.mark.parametrize("shape", [(2, 5, 6, 2, 8), (2, 5, 6, 4, 2, 8), (8,)])
def test_packed_call_refuses_a_tensor_without_a_qkv_axis(shape):
    params = NAParams((3, 3), (1, 1), (1, 1), (False, False), 0.5)
    with pytest.raises(ValueError, match=r"qkv has shape .*; expected \[batch, \*spatial, 3,"):
        na_packed_op(torch.zeros(shape), None, params)


class Watching(TorchDispatchMode):
    """A dispatch mode that changes nothing: like FlopCounterMode, it makes the op dispatch."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def graph_nodes(tensor: torch.Tensor) -> set[str]:
    seen, stack, names = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names


@pytest.mark.parametrize("module", [nat.NeighborhoodAttention1D, nat.NeighborhoodAttention2D])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_modules_train_through_the_packed_op(module, dtype):
    """No unbind in the graph, so no stack of three gradients in the backward."""
    layer = module(32, 2, 3).to(dtype)
    x = torch.randn(2, *(6,) * module.ndim, 32, dtype=dtype)
    names = graph_nodes(layer(x))
    assert "_EagerPackedNABackward" in names, names  # the packed op's eager autograd
    assert not any("Unbind" in n for n in names), names
    with Watching():  # where something records the op, the registered op itself runs
        names = graph_nodes(layer(x))
    assert any("na_packed_forward" in n for n in names), names
    with torch.no_grad():  # inference keeps the plain call (no autograd op to record)
        torch.testing.assert_close(layer(x), layer.train(False)(x))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float32_trains_packed_only_where_the_8_lane_kernel_writes_it(backend):
    """float32 goes packed through the kernel built with 8 lanes (AVX2), unpacked with 16
    (AVX-512, where the kernel's own head-major sums are faster) and on backends without a packed
    backward (``torch``)."""
    layer = nat.NeighborhoodAttention2D(32, 2, 3, backend=backend)
    names = graph_nodes(layer(torch.randn(2, 6, 6, 32)))
    if backend == "cpu" and cpu.vector_lanes() == 8:
        assert "_EagerPackedNABackward" in names and "UnbindBackward0" not in names, names
    else:
        assert "UnbindBackward0" in names and not any("acked" in n for n in names), names
    if backend == "torch":
        names = graph_nodes(layer.bfloat16()(torch.randn(2, 6, 6, 32, dtype=torch.bfloat16)))
        assert "UnbindBackward0" in names, names


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_module_gradients_equal_the_unpacked_ones(dropout):
    """The module's parameter gradients, with attention dropout too (which runs unpacked)."""
    torch.manual_seed(0)
    layer = nat.NeighborhoodAttention2D(32, 2, 5, dilation=2, attn_drop=dropout).bfloat16()
    x = torch.randn(2, 11, 12, 32, dtype=torch.bfloat16)

    def unpacked(x):
        qkv = layer.qkv(x).unflatten(-1, (3, 2, 16))
        p = layer.attn_drop if layer.training else 0.0
        return layer.proj(
            na_op(*qkv.unbind(-3), layer.rpb, layer._params, None, dropout=p).flatten(-2)
        )

    results = []
    for fn in (layer, unpacked):
        torch.manual_seed(1)
        layer.zero_grad()
        fn(x).square().sum().backward()
        results.append([p.grad.clone() for p in layer.parameters()])
    for g, w in zip(*results, strict=True):
        assert torch.equal(g, w)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    ("name", "dtype"), [("2d rpb", torch.float32), ("2d covering", torch.float64)]
)
def test_opcheck_packed_ops(backend, name, dtype):
    qkv, bias, params = make(PROBLEMS[name], dtype)
    window = (list(params.kernel_size), list(params.stride), list(params.dilation))
    window = (*window, list(params.is_causal), params.scale, backend)
    torch.library.opcheck(torch.ops.nat.na_packed_forward.default, (qkv, bias, *window))
    out, lse, saved = torch.ops.nat.na_packed_forward(qkv.detach(), bias.detach(), *window)
    args = (torch.randn_like(out), qkv.detach(), bias.detach(), out, lse, *window)
    torch.library.opcheck(torch.ops.nat.na_packed_backward.default, args)
    args = (*args, torch.randn_like(lse))  # a gradient reaching the log-sum-exp
    torch.library.opcheck(torch.ops.nat.na_packed_backward.default, args)
    # with what the forward kept (the cpu backend's logits)
    torch.library.opcheck(torch.ops.nat.na_packed_backward.default, (*args, saved))


def test_lse_gradient_through_the_packed_op_matches_the_reference():
    qkv, bias, params = make(PROBLEMS["2d rpb"], torch.float64)
    window = (list(params.kernel_size), list(params.stride), list(params.dilation))
    window = (*window, list(params.is_causal), params.scale)

    def packed(qkv, bias):
        out, lse, _ = torch.ops.nat.na_packed_forward(qkv.float(), bias.float(), *window, "torch")
        return out.sum() + lse.sin().sum()

    def reference(qkv, bias):
        out, lse = na_op(*qkv.unbind(-3), bias, params, "reference", return_lse=True)
        return out.sum() + lse.transpose(-1, -2).flatten(1).sin().sum()

    got = torch.autograd.grad(packed(qkv, bias), (qkv, bias))
    want = torch.autograd.grad(reference(qkv, bias), (qkv, bias))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_flop_counter_counts_a_training_step_of_the_module():
    layer = nat.NeighborhoodAttention2D(32, 2, 3).bfloat16()
    x = torch.randn(2, 6, 7, 32, dtype=torch.bfloat16)
    spec = 2 * 2 * 2 * 42 * 9 * (16 + 16)  # 2 * B * heads * N * K^2 * (D + Dv)
    with FlopCounterMode(display=False) as counter:
        layer(x).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.nat.na_packed_forward] == spec
    assert counts[torch.ops.nat.na_packed_backward] == 2 * spec


def test_compiled_module_trains_like_eager():
    torch.manual_seed(0)
    layer = nat.NeighborhoodAttention2D(32, 2, 3, dilation=2).bfloat16()
    x = torch.randn(2, 9, 8, 32, requires_grad=True, dtype=torch.bfloat16)
    layer(x).square().sum().backward()
    want = [x.grad.clone(), *(p.grad.clone() for p in layer.parameters())]
    x.grad = None
    layer.zero_grad()
    torch.compile(layer, fullgraph=True)(x).square().sum().backward()
    got = [x.grad, *(p.grad for p in layer.parameters())]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(6, 7), (3, 3)])  # 3 x 3: the window covers the map
def test_eager_training_skips_the_op_dispatch_with_the_ops_gradients(monkeypatch, dtype, shape):
    """Plain eager autograd calls the backends directly; outputs and every gradient, the rpb's
    and the log-sum-exp's included, are bit-identical to the registered ops'."""
    from nat.ops import dispatch

    torch.manual_seed(0)
    layer = nat.NeighborhoodAttention2D(32, 2, 3).to(dtype)
    x = torch.randn(2, *shape, 32, dtype=dtype)
    q, k, v = (torch.randn(2, *shape, 2, 8, dtype=dtype) for _ in "qkv")
    rpb = torch.randn(2, 5, 5, dtype=dtype)

    def run():
        leaves = [t.detach().clone().requires_grad_() for t in (x, q, k, v, rpb)]
        for p in layer.parameters():
            p.grad = None
        out, lse = nat.na2d(*leaves[1:4], 3, rpb=leaves[4], return_lse=True)
        loss = layer(leaves[0]).square().sum() + out.square().sum() + lse.sin().sum()
        loss.backward()
        return [out, lse, *(t.grad for t in leaves), *(p.grad for p in layer.parameters())]

    with Watching():
        through_ops = run()
    monkeypatch.setattr(dispatch, "_na_forward", None)  # any call through an op would fail
    monkeypatch.setattr(dispatch, "_na_packed_forward", None)
    direct = run()
    for got, want in zip(direct, through_ops, strict=True):
        assert torch.equal(got, want)
