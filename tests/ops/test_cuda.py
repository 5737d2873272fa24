"""The operator on CUDA devices (skipped without one): every CUDA backend against the reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import nat
from nat.ops import available_backends
from nat.ops.dispatch import why_not
from nat.ops.spec import check_na_args

from .strategies import problems

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def cuda_backends() -> list[str]:
    return [b for b in available_backends("cuda") if b != "reference"]


def can_run(backend: str, problem, dtype) -> bool:
    """Whether ``backend``'s capability check accepts the problem (flex: no small head_dims)."""
    q, k, v, rpb = (None if t is None else t.cuda() for t in problem.tensors(dtype))
    params = check_na_args(q, k, v, len(problem.spatial), rpb=rpb, **problem.window_kwargs())
    return why_not(backend, q.device, (q, k, v, rpb, params)) is None


def forward_and_grads(problem, backend, device, dtype):
    inputs = [t.to(device).requires_grad_() for t in problem.tensors(dtype) if t is not None]
    q, k, v, *rest = inputs
    out = nat.neighborhood_attention(
        q, k, v, rpb=rest[0] if rest else None, backend=backend, **problem.window_kwargs()
    )
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(grad.to(device=device, dtype=out.dtype))
    return out.detach().cpu().double(), [t.grad.cpu().double() for t in inputs]


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 4e-2)])
@settings(max_examples=25)
@given(problem=problems())
def test_cuda_backends_match_reference(dtype, tol, problem):
    expected, expected_grads = forward_and_grads(problem, "reference", "cpu", torch.float64)
    for backend in cuda_backends():
        if backend != "triton" and not can_run(backend, problem, dtype):
            continue
        out, grads = forward_and_grads(problem, backend, "cuda", dtype)
        torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
        for g, e in zip(grads, expected_grads, strict=True):
            scale = e.abs().max().clamp_min(1)
            torch.testing.assert_close(g / scale, e / scale, rtol=4 * tol, atol=4 * tol)


def test_auto_takes_the_triton_kernels_on_cuda():
    assert cuda_backends()[0] == "triton"


def test_module_compiles_with_inductor_on_cuda():
    torch.manual_seed(0)
    module = nat.NeighborhoodAttention2D(64, 2, 7, dilation=2).cuda()
    x = torch.randn(2, 20, 23, 64, device="cuda", requires_grad=True)
    expected = module(x)
    compiled = torch.compile(module, fullgraph=True)
    out = compiled(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    out.sum().backward()
    assert x.grad is not None and module.rpb.grad is not None


def test_autocast_on_cuda_runs_in_half_precision():
    module = nat.NeighborhoodAttention2D(64, 2, 7).cuda()
    x = torch.randn(2, 14, 14, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = module(x)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), module(x), rtol=2e-2, atol=2e-2)
