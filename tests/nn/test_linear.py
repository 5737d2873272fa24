"""nat.nn.Linear: float32 CPU products in oneDNN (nat::linear) where chosen, F.linear otherwise."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import nat.nn.linear as nat_linear
from nat.nn import Linear, cpu_linear_backend, set_cpu_linear_backend, use_nat_linear

pytestmark = pytest.mark.skipif(
    not nat_linear.onednn_available(), reason="this PyTorch has no oneDNN"
)


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    set_cpu_linear_backend(None)


class _Ops(TorchDispatchMode):
    """Names of the ops dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _ops(fn) -> list[str]:
    with _Ops() as mode:
        fn()
    return mode.names


def _grads(fn, *tensors):
    out = fn(*tensors)
    grad = torch.linspace(-1, 1, out.numel()).view(out.shape)
    out.backward(grad)
    grads = [t.grad for t in tensors]
    for t in tensors:
        t.grad = None
    return out.detach(), grads


@pytest.mark.parametrize(
    "x_shape, out_features, bias",
    [
        ((5, 7), 3, True),  # N < K: the weight gradient as grad.T @ x
        ((4, 6, 8), 24, True),  # N >= K: as (x.T @ grad).T
        ((2, 3, 5, 16), 16, False),
        ((1, 1), 1, True),
    ],
)
def test_matches_f_linear_values_and_gradients(x_shape, out_features, bias):
    set_cpu_linear_backend("onednn")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=gen, requires_grad=True)
    w = torch.randn(out_features, x_shape[-1], generator=gen, requires_grad=True)
    b = torch.randn(out_features, generator=gen, requires_grad=True) if bias else None
    tensors = (x, w) + ((b,) if bias else ())
    got, got_grads = _grads(lambda *t: nat_linear.linear(*t), *tensors)
    want, want_grads = _grads(lambda *t: F.linear(*t), *tensors)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, h in zip(got_grads, want_grads, strict=True):
        assert g.shape == h.shape
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-5)


def test_non_contiguous_input_and_partial_gradients():
    set_cpu_linear_backend("onednn")
    x = torch.randn(12, 6).t()  # [6, 12], strided
    w = torch.randn(5, 12, requires_grad=True)
    b = torch.randn(5)  # no gradient wanted
    torch.testing.assert_close(nat_linear.linear(x, w, b), F.linear(x, w, b))
    nat_linear.linear(x, w, b).sum().backward()
    torch.testing.assert_close(w.grad, torch.ones(6, 5).t() @ x)
    # Only the input's gradient.
    x = torch.randn(3, 12, requires_grad=True)
    w = torch.randn(5, 12)
    nat_linear.linear(x, w).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(3, 5) @ w)


def test_double_backward_matches_f_linear():
    set_cpu_linear_backend("onednn")

    def penalty(fn):
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(2, 6, 8, generator=gen, requires_grad=True)
        w = torch.randn(5, 8, generator=gen, requires_grad=True)
        b = torch.randn(5, generator=gen, requires_grad=True)
        y = fn(x, w, b).tanh().sum()
        gx, gw = torch.autograd.grad(y, (x, w), create_graph=True)
        (gx.square().sum() + gw.square().sum()).backward()
        return x.grad, w.grad, b.grad

    for got, want in zip(penalty(nat_linear.linear), penalty(F.linear), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _autocast_grads(fn, x, w, b):
    """``fn``'s output under CPU autocast to bf16 and the float32 gradients it sends back."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(x, w, b)
    grad = torch.linspace(-1, 1, out.numel()).view(out.shape).to(out.dtype)
    tensors = [t for t in (x, w, b) if t is not None and t.requires_grad]
    return out, out.grad_fn, torch.autograd.grad(out, tensors, grad)


@pytest.mark.parametrize(
    "x_shape, out_features, bias",
    [
        ((5, 7), 3, True),  # few rows: the weight gradient as grad.T @ x
        ((4096, 24), 8, True),  # many rows, N < K: as (x.T @ grad).T
        ((4, 6, 8), 24, True),  # N >= K: as grad.T @ x
        ((2, 3, 5, 16), 16, False),
        ((392, 64), 192, True),
    ],
)
def test_bfloat16_autocast_matches_f_linear_to_the_bit(x_shape, out_features, bias):
    set_cpu_linear_backend("onednn")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(x_shape, generator=gen, requires_grad=True)
    w = torch.randn(out_features, x_shape[-1], generator=gen, requires_grad=True)
    b = torch.randn(out_features, generator=gen, requires_grad=True) if bias else None
    got, node, got_grads = _autocast_grads(nat_linear.linear, x, w, b)
    want, _, want_grads = _autocast_grads(F.linear, x, w, b)
    assert type(node).__name__ == "_BFloat16LinearBackward"  # the bf16 path ran
    assert got.dtype == want.dtype == torch.bfloat16 and torch.equal(got, want)
    for g, h in zip(got_grads, want_grads, strict=True):
        assert g.dtype == h.dtype == torch.float32 and torch.equal(g, h)


def test_bfloat16_tensors_without_autocast_match_f_linear_to_the_bit():
    set_cpu_linear_backend("onednn")
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 7, 12, generator=gen).bfloat16().requires_grad_()
    w = torch.randn(20, 12, generator=gen).bfloat16().requires_grad_()
    b = torch.randn(20, generator=gen).bfloat16().requires_grad_()
    got, got_grads = _grads(nat_linear.linear, x, w, b)
    want, want_grads = _grads(F.linear, x, w, b)
    assert torch.equal(got, want)
    for g, h in zip(got_grads, want_grads, strict=True):
        assert g.dtype == torch.bfloat16 and torch.equal(g, h)
    with torch.no_grad():  # inference: oneDNN's product without autograd
        assert torch.equal(nat_linear.linear(x, w, b), F.linear(x, w, b))


def test_bfloat16_partial_gradients_and_double_backward_match_f_linear():
    set_cpu_linear_backend("onednn")
    x = torch.randn(6, 12).t()  # [12, 6], strided, no gradient
    w = torch.randn(5, 6, requires_grad=True)
    got, _, (gw,) = _autocast_grads(nat_linear.linear, x, w, None)
    want, _, (hw,) = _autocast_grads(F.linear, x, w, None)
    assert torch.equal(got, want) and torch.equal(gw, hw)

    def penalty(fn):
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(2, 6, 8, generator=gen, requires_grad=True)
        w = torch.randn(5, 8, generator=gen, requires_grad=True)
        b = torch.randn(5, generator=gen, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(x, w, b).float().tanh().sum()
        gx, gw = torch.autograd.grad(y, (x, w), create_graph=True)
        (gx.square().sum() + gw.square().sum()).backward()
        return x.grad, w.grad, b.grad

    for got, want in zip(penalty(nat_linear.linear), penalty(F.linear), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("case", ["blas", "float16", "flop-counter", "compiled"])
def test_bfloat16_path_leaves_other_calls_to_f_linear(case):
    set_cpu_linear_backend("blas" if case == "blas" else "onednn")
    x = torch.randn(4, 8, requires_grad=True)
    w, b = torch.randn(3, 8, requires_grad=True), torch.randn(3, requires_grad=True)
    dtype = torch.float16 if case == "float16" else torch.bfloat16
    if case == "flop-counter":
        counter = FlopCounterMode(display=False)
        with counter, torch.autocast("cpu", dtype=dtype):
            nat_linear.linear(x, w, b).sum().backward()
        assert counter.get_total_flops() == 3 * 2 * 4 * 8 * 3
        return
    if case == "compiled":
        torch._dynamo.reset()
        fn = torch.compile(nat_linear.linear, fullgraph=True, backend="aot_eager")
        with torch.autocast("cpu", dtype=dtype):
            got = fn(x, w, b)
        with torch.autocast("cpu", dtype=dtype):
            assert torch.equal(got, F.linear(x, w, b))
        return
    with torch.autocast("cpu", dtype=dtype):
        out = nat_linear.linear(x, w, b)
    assert out.dtype == dtype and type(out.grad_fn).__name__ != "_BFloat16LinearBackward"


def test_the_backend_decides_which_op_runs():
    x, w, b = torch.randn(4, 8), torch.randn(3, 8), torch.randn(3)
    set_cpu_linear_backend("onednn")
    assert "nat.linear" in _ops(lambda: nat_linear.linear(x, w, b))
    set_cpu_linear_backend("blas")
    assert "nat.linear" not in _ops(lambda: nat_linear.linear(x, w, b))


def test_training_dispatches_the_weight_gradient_op():
    set_cpu_linear_backend("onednn")
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(3, 8, requires_grad=True)
    names = _ops(lambda: nat_linear.linear(x, w).sum().backward())
    assert names.count("nat.linear") == 2  # the product and the input's gradient
    assert "nat.linear_weight_grad" in names


@pytest.mark.parametrize(
    "case",
    ["bfloat16", "float64", "autocast", "one-dimensional", "empty", "wrong-width"],
)
def test_falls_back_to_f_linear(case):
    set_cpu_linear_backend("onednn")
    x, w, b = torch.randn(4, 8), torch.randn(3, 8), torch.randn(3)
    if case in ("bfloat16", "float64"):
        dtype = getattr(torch, case)
        x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
    elif case == "one-dimensional":
        x = x[0]
    elif case == "empty":
        x = x[:0]
    elif case == "wrong-width":
        x = torch.randn(4, 9)
        with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
            nat_linear.linear(x, w, b)
        return
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            names = _ops(lambda: nat_linear.linear(x, w, b))
            assert nat_linear.linear(x, w, b).dtype == torch.bfloat16
    else:
        names = _ops(lambda: nat_linear.linear(x, w, b))
        torch.testing.assert_close(nat_linear.linear(x, w, b), F.linear(x, w, b))
    assert "nat.linear" not in names


def test_flop_count_is_f_linears():
    def count(backend):
        set_cpu_linear_backend(backend)
        layer = Linear(8, 6)
        x = torch.randn(2, 5, 8, requires_grad=True)
        counter = FlopCounterMode(display=False)
        with counter:
            layer(x).sum().backward()
        return counter.get_total_flops()

    assert count("onednn") == count("blas") == 3 * 2 * 10 * 8 * 6


def test_exported_programs_keep_the_standard_linear():
    set_cpu_linear_backend("onednn")
    layer = Linear(8, 4).eval()
    x = torch.randn(3, 8)
    program = torch.export.export(layer, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("nat.linear" in t for t in targets), targets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace is deprecated
        traced = torch.jit.trace(layer, (x,))
    assert "nat::linear" not in str(traced.graph)
    torch.testing.assert_close(program.module()(x), layer(x))


def test_compiles_without_graph_breaks():
    set_cpu_linear_backend("onednn")
    torch._dynamo.reset()
    layer = nn.Sequential(Linear(8, 16), nn.GELU(), Linear(16, 4))
    x = torch.randn(5, 8, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    torch.testing.assert_close(got, layer(x))
    got.sum().backward()
    assert x.grad is not None and layer[0].weight.grad is not None


def test_linear_is_an_nn_linear_with_its_state_dict():
    torch.manual_seed(0)
    plain = nn.Linear(6, 4)
    ours = Linear(6, 4)
    assert isinstance(ours, nn.Linear)
    assert ours.state_dict().keys() == plain.state_dict().keys()
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(2, 6)
    for backend in ("onednn", "blas"):
        set_cpu_linear_backend(backend)
        torch.testing.assert_close(ours(x), plain(x))


def test_use_nat_linear_swaps_layers_in_place_keeping_parameters_and_hooks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.ReLU(), nn.Linear(8, 2)), Linear(2, 2))
    seen = []
    model[1][1].register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    x = torch.randn(3, 4)
    want = model(x)
    assert use_nat_linear(model) is model
    assert type(model[0]) is Linear and type(model[1][1]) is Linear and type(model[2]) is Linear
    assert [id(p) for p in model.parameters()] == params
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    set_cpu_linear_backend("onednn")
    torch.testing.assert_close(model(x), want)
    assert seen == [torch.Size([3, 2])] * 2


def test_use_nat_linear_refuses_a_bare_linear():
    with pytest.raises(TypeError, match=r"model is an nn\.Linear itself"):
        use_nat_linear(nn.Linear(2, 2))


def test_nat_models_have_no_plain_linear_left():
    import timm

    import nat  # noqa: F401  (registers the models)

    model = timm.create_model("nat_mini", num_classes=10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is Linear for m in linears)


def test_bad_backend_names_are_refused():
    with pytest.raises(ValueError, match=r"backend='mkl'; expected one of auto, onednn, blas"):
        set_cpu_linear_backend("mkl")


def test_bad_environment_variable_is_refused(monkeypatch):
    monkeypatch.setenv("NAT_CPU_LINEAR", "fast")
    with pytest.raises(ValueError, match=r"NAT_CPU_LINEAR='fast'; expected one of auto"):
        set_cpu_linear_backend(None)
    monkeypatch.setenv("NAT_CPU_LINEAR", "blas")
    set_cpu_linear_backend(None)
    assert cpu_linear_backend() == "blas"


@pytest.mark.parametrize(
    "vendor, capability, want",
    [
        ("AuthenticAMD", "AVX512", "onednn"),
        ("AuthenticAMD", "AVX2", "blas"),
        ("GenuineIntel", "AVX512", "blas"),
        ("", "AVX512", "blas"),
    ],
)
def test_auto_chooses_onednn_on_amd_cpus_with_avx512(monkeypatch, vendor, capability, want):
    import nat.ops.cpu

    monkeypatch.setattr(nat.ops.cpu, "_cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    set_cpu_linear_backend("auto")
    assert cpu_linear_backend() == want


def test_onednn_where_pytorch_has_none_is_refused(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="has no oneDNN"):
        set_cpu_linear_backend("onednn")
    set_cpu_linear_backend("auto")
    assert cpu_linear_backend() == "blas"
