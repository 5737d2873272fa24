"""Every backend computes the reference, forward and backward, over random problems."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import nat
from nat.ops import available_backends, cpu
from nat.ops.dispatch import resolve_backend
from nat.ops.spec import NAParams, covers_input

from .strategies import Problem, problems

BACKENDS = [b for b in available_backends("cpu") if b != "reference"]


def run(problem, tensors, backend):
    q, k, v, rpb = tensors
    return nat.neighborhood_attention(q, k, v, rpb=rpb, backend=backend, **problem.window_kwargs())


def forward_and_grads(problem, backend, dtype=torch.float64):
    inputs = [t.clone().requires_grad_() for t in problem.tensors(dtype) if t is not None]
    q, k, v, *rest = inputs
    out = run(problem, (q, k, v, rest[0] if rest else None), backend)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(grad.to(out.dtype))
    return out.detach(), [t.grad for t in inputs]


@pytest.mark.parametrize("backend", BACKENDS)
@given(problem=problems())
def test_forward_and_gradients_match_reference(backend, problem):
    expected, expected_grads = forward_and_grads(problem, "reference")
    out, grads = forward_and_grads(problem, backend)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("dtype", "tol"),
    [(torch.float32, 2e-5), (torch.bfloat16, 3e-2), (torch.float16, 4e-3)],
)
@settings(max_examples=10)
@given(problem=problems(ndim=2))
def test_reduced_precision_matches_reference(backend, dtype, tol, problem):
    expected, expected_grads = forward_and_grads(problem, "reference", torch.float64)
    out, grads = forward_and_grads(problem, backend, dtype)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    for g, e in zip(grads, expected_grads, strict=True):
        assert g.dtype == dtype
        scale = e.abs().max().clamp_min(1)
        torch.testing.assert_close(g.double() / scale, e / scale, rtol=4 * tol, atol=4 * tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(spatial=(7,), kernel_size=3, dilation=2, rpb=True),
        dict(spatial=(5, 6), kernel_size=(3, 5), dilation=(1, 1), rpb=True),
        dict(spatial=(6, 5), kernel_size=(2, 3), stride=(2, 1), is_causal=(True, False)),
        dict(spatial=(4, 3, 5), kernel_size=(2, 3, 3), dilation=(2, 1, 1), rpb=False),
    ],
)
def test_gradcheck(backend, kwargs):
    kwargs = dict(kwargs)
    spatial, with_rpb = kwargs.pop("spatial"), kwargs.pop("rpb", False)
    g = torch.Generator().manual_seed(0)
    shape = (1, *spatial, 2, 3)
    inputs = [
        torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True) for _ in "qkv"
    ]
    if with_rpb:
        kernel = kwargs["kernel_size"]
        kernel = (kernel,) * len(spatial) if isinstance(kernel, int) else kernel
        rpb_shape = (2, *(2 * k - 1 for k in kernel))
        inputs.append(torch.randn(rpb_shape, generator=g, dtype=torch.float64, requires_grad=True))

    def fn(q, k, v, rpb=None):
        return nat.neighborhood_attention(q, k, v, rpb=rpb, backend=backend, **kwargs)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_runs_in_the_autocast_dtype(backend):
    module = nat.NeighborhoodAttention2D(16, 2, 3, backend=backend)
    x = torch.randn(2, 6, 7, 16)
    expected = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=3e-2, atol=3e-2)
    out.float().sum().backward()
    assert module.rpb.grad is not None and module.rpb.grad.dtype == torch.float32


def test_auto_takes_the_highest_priority_backend_and_reference_comes_last():
    names = nat.available_backends("cpu")
    assert names[-1] == "reference"
    assert resolve_backend("auto", torch.device("cpu")) == names[0]
    assert names[0] == ("cpu" if cpu.is_available() else "torch")


def test_the_default_backend_computes_the_reference():
    q = k = v = torch.randn(1, 8, 2, 4)
    with nat.use_backend("reference"):
        expected = nat.na1d(q, k, v, 3)
    torch.testing.assert_close(nat.na1d(q, k, v, 3), expected)


def test_use_backend_routes_calls_and_restores():
    from nat.ops import default_backend

    assert default_backend() == "auto"
    with nat.use_backend("reference"):
        assert default_backend() == "reference"
    assert default_backend() == "auto"


def test_memory_is_linear_in_tokens():
    """The composite path never holds an N x N matrix: its chunks are bounded."""
    from torch.profiler import ProfilerActivity, profile

    q = k = v = torch.randn(1, 64, 64, 1, 8)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        nat.na2d(q, k, v, 3, backend="torch")
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert largest < (64 * 64) ** 2 * 4 // 16


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head_dim", [16, 32, 64])
@settings(max_examples=8)
@given(problem=problems())
def test_float32_model_head_dims_match_reference(backend, head_dim, problem):
    """Head dims the models use take the vectorised kernels: same semantics as everything else."""
    problem.head_dim = problem.head_dim_v = head_dim
    expected, expected_grads = forward_and_grads(problem, "reference", torch.float64)
    out, grads = forward_and_grads(problem, backend, torch.float32)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)
    for g, e in zip(grads, expected_grads, strict=True):
        scale = e.abs().max().clamp_min(1)
        torch.testing.assert_close(g.double() / scale, e / scale, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head_dim", [16, 32, 64])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.bfloat16, 3e-2), (torch.float16, 4e-3)])
@settings(max_examples=6)
@given(problem=problems())
def test_reduced_precision_model_head_dims_match_reference(backend, head_dim, dtype, tol, problem):
    """bfloat16/float16 at the models' head dims (the vectorised kernels, float32 inside)."""
    problem.head_dim = problem.head_dim_v = head_dim
    expected, expected_grads = forward_and_grads(problem, "reference", torch.float64)
    out, grads = forward_and_grads(problem, backend, dtype)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    for g, e in zip(grads, expected_grads, strict=True):
        assert g.dtype == dtype
        scale = e.abs().max().clamp_min(1)
        torch.testing.assert_close(g.double() / scale, e / scale, rtol=4 * tol, atol=4 * tol)


@pytest.mark.skipif(not cpu.is_available(), reason="the CPU kernel is not built")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [32, 64])
def test_reduced_precision_kernel_is_float32_rounded_once(dtype, head_dim):
    """The fused kernel computes bf16/fp16 inputs in float32: its output and the value gradient
    are the float32 kernel's on the same values, rounded once to nearest even, and rarely one
    unit in the last place off: on CPUs with AVX512-BF16, bf16 query-key products are summed by
    ``vdpbf16ps`` in another order, and in each dtype's build of a dot product the compiler may
    fuse a different one of its products into an FMA. (dQ, dK and dRPB also read the rounded
    output, through ``sum(dO * O)``: tolerances above.)"""
    g = torch.Generator().manual_seed(0)
    low = [torch.randn(2, 9, 11, 2, head_dim, generator=g).to(dtype) for _ in range(4)]
    low.append((0.5 * torch.randn(2, 9, 9, generator=g)).to(dtype))
    wide = [t.float() for t in low]

    def out_and_dv(tensors):
        q, k, v, grad, rpb = tensors
        v = v.clone().requires_grad_()
        out = nat.na2d(q, k, v, 5, dilation=(1, 2), rpb=rpb, backend="cpu")
        out.backward(grad)
        return out, v.grad

    for got, want in zip(out_and_dv(low), out_and_dv(wide), strict=True):
        assert got.dtype == dtype
        rounded = want.to(dtype)
        # within one ulp of the float32 value (plus float32 noise near 0), rarely off
        torch.testing.assert_close(got.float(), want, rtol=torch.finfo(dtype).eps, atol=1e-6)
        assert (got != rounded).float().mean() < 0.01


@pytest.mark.skipif(not cpu.is_available(), reason="the CPU kernel is not built")
@pytest.mark.parametrize("head_dim", [32, 64])
def test_bfloat16_kernel_output_rounds_nan_and_every_element_like_torch(head_dim):
    """The bf16 forward widens and stores value rows as even and odd elements (no shuffles): each
    element must still come out as the float32 kernel's value rounded, and a NaN as 0x7fc0."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 9, 2, head_dim, generator=g).to(torch.bfloat16) for _ in range(3))
    v[0, 3, 4, 1, 6] = float("nan")  # an even element of a value row
    v[1, 2, 2, 0, head_dim - 1] = float("nan")  # an odd one
    got = nat.na2d(q, k, v, 3, backend="cpu")
    want = nat.na2d(q.float(), k.float(), v.float(), 3, backend="cpu").to(torch.bfloat16)
    assert torch.equal(got.isnan(), want.isnan())
    assert want.isnan()[..., 6].any() and want.isnan()[..., head_dim - 1].any()
    close = (got.float() - want.float()).abs() <= want.float().abs() * 2**-7 + 1e-6
    assert torch.equal(close | got.isnan(), torch.ones_like(close))
    # c10::BFloat16's NaN (torch's vectorised casts may keep a payload instead).
    assert (got.view(torch.int16)[got.isnan()] == 0x7FC0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head_dim", [4, 32])
def test_strided_slices_of_a_packed_qkv_give_the_contiguous_result(backend, head_dim):
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 9, 10, 3, 2, head_dim, generator=g, requires_grad=True)
    rpb = torch.randn(2, 5, 5, generator=g)
    q, k, v = qkv.unbind(3)
    assert not q.is_contiguous()
    out = nat.na2d(q, k, v, 3, dilation=(2, 1), rpb=rpb, backend=backend)
    (grad,) = torch.autograd.grad(out.square().sum(), qkv)
    q2, k2, v2 = (t.detach().contiguous().requires_grad_() for t in (q, k, v))
    expected = nat.na2d(q2, k2, v2, 3, dilation=(2, 1), rpb=rpb, backend=backend)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q2, k2, v2))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, torch.stack(expected_grads, 3))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head_dim", [3, 32])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize(
    ("spatial", "kernel_size", "stride"),
    [((7, 7), 7, 1), ((5, 4), (5, 4), (2, 3)), ((3, 4, 5), (3, 4, 5), 1)],
)
def test_windows_covering_the_input_are_dense_attention(
    backend, head_dim, dtype, tol, spatial, kernel_size, stride
):
    """The deepest NAT level (7 x 7 map, kernel 7) takes the dense path: same result, same grads."""
    ndim = len(spatial)
    kernel = (kernel_size,) * ndim if isinstance(kernel_size, int) else kernel_size
    strides = (stride,) * ndim if isinstance(stride, int) else stride
    assert covers_input(spatial, NAParams(kernel, strides, (1,) * ndim, (False,) * ndim, 1.0))
    problem = Problem(
        spatial,
        kernel,
        strides,
        (1,) * ndim,
        (False,) * ndim,
        2,
        2,
        head_dim,
        head_dim,
        all(s == 1 for s in strides) and all(k % 2 for k in kernel),
    )
    expected, expected_grads = forward_and_grads(problem, "reference")
    out, grads = forward_and_grads(problem, backend, dtype)
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g.double(), e, rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
@pytest.mark.parametrize("shape", [(0, 8, 8, 2, 4), (2, 8, 8, 0, 4), (0, 7, 7, 2, 32)])
def test_empty_batch_or_heads_give_empty_results(backend, shape):
    q = torch.randn(shape, requires_grad=True)
    out = nat.na2d(q, q, q, 3, backend=backend)
    assert out.shape == shape
    out.sum().backward()
    assert q.grad.shape == shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 2e-5), (torch.float16, 4e-3)])
@pytest.mark.parametrize(("spatial", "kernel_size"), [((7, 7), 7), ((4, 5), (4, 5)), ((9,), 3)])
def test_value_head_dim_may_differ_from_the_query(backend, dtype, tol, spatial, kernel_size):
    """Also when the window covers the input, where the dense path runs."""
    ndim = len(spatial)
    kernel = (kernel_size,) * ndim if isinstance(kernel_size, int) else kernel_size
    problem = Problem(
        spatial, kernel, (1,) * ndim, (1,) * ndim, (False,) * ndim, 2, 2, 8, 4,
        all(k % 2 for k in kernel),
    )  # fmt: skip
    expected, expected_grads = forward_and_grads(problem, "reference")
    out, grads = forward_and_grads(problem, backend, dtype)
    assert out.shape == (2, *spatial, 2, 4)
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    for g, e in zip(grads, expected_grads, strict=True):
        scale = e.abs().max().clamp_min(1)
        torch.testing.assert_close(g.double() / scale, e / scale, rtol=4 * tol, atol=4 * tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("kernel_size", "head_dim_v"), [(3, 16), (8, 16), (8, 4)])
def test_float16_scores_beyond_float16_range_match_the_reference(backend, kernel_size, head_dim_v):
    """``q . k`` = 65536 > float16's largest 65504: statistics run in float32, as in every backend.

    Kernel 8 on an 8 x 8 input is the dense path; with ``head_dim_v != head_dim`` it is its GEMMs.
    """
    g = torch.Generator().manual_seed(0)
    q = k = torch.full((1, 8, 8, 1, 16), 64.0, dtype=torch.float64)
    v = torch.randn(1, 8, 8, 1, head_dim_v, generator=g, dtype=torch.float64)
    grad = torch.randn(1, 8, 8, 1, head_dim_v, generator=g, dtype=torch.float64)

    def run(backend, dtype):
        inputs = [t.to(dtype, copy=True).requires_grad_() for t in (q, k, v)]
        out = nat.na2d(*inputs, kernel_size, backend=backend)
        return out.detach(), torch.autograd.grad(out, inputs, grad.to(dtype))

    expected, expected_grads = run("reference", torch.float64)
    out, grads = run(backend, torch.float16)
    torch.testing.assert_close(out.double(), expected, rtol=4e-3, atol=4e-3)
    # dq is a difference of terms as large as dk: its rounding error scales with theirs.
    scale = max(e.abs().max() for e in expected_grads)
    for g_, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g_.double() / scale, e / scale, rtol=4e-3, atol=1e-3)
