"""The Triton kernels under Triton's interpreter (CPU tensors), against the reference.

Run by ``test_triton.py`` in a process started with ``TRITON_INTERPRET=1``: Triton reads the
variable when it is imported (which ``import torch``'s custom-op machinery already does), so it
cannot be switched on inside a running test session without changing every other test's Triton.
Shapes stay tiny: the interpreter runs each program in numpy.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import nat
from nat.ops import triton as triton_backend

from .strategies import Problem, problems

pytestmark = pytest.mark.skipif(
    not triton_backend.load().INTERPRETED, reason="needs TRITON_INTERPRET=1 (see test_triton.py)"
)


def run(problem: Problem, backend: str, dtype: torch.dtype = torch.float32):
    """Output, log-sum-exp and the gradients of q, k, v (and rpb) for a fixed upstream gradient."""
    inputs = [t.requires_grad_() for t in problem.tensors(dtype) if t is not None]
    q, k, v, *rest = inputs
    out, lse = nat.neighborhood_attention(
        q,
        k,
        v,
        rpb=rest[0] if rest else None,
        backend=backend,
        return_lse=True,
        **problem.window_kwargs(),
    )
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn(out.shape, generator=g).to(out.dtype)
    grad_lse = torch.randn(lse.shape, generator=g).to(lse.dtype)
    grads = torch.autograd.grad((out * grad_out).sum() + (lse * grad_lse).sum(), inputs)
    return [t.detach().double() for t in (out, lse, *grads)]


def assert_matches_reference(problem: Problem, dtype=torch.float32, tol=2e-5) -> None:
    expected = run(problem, "reference", torch.float64)
    for got, want in zip(run(problem, "triton", dtype), expected, strict=True):
        scale = want.abs().max().clamp_min(1)
        torch.testing.assert_close(got / scale, want / scale, rtol=tol, atol=tol)


CASES = {
    "1d": Problem((9,), (3,), (1,), (1,), (False,), 2, 2, 8, 8, False),
    "1d-rpb-dilation": Problem((11,), (5,), (1,), (2,), (False,), 1, 2, 8, 4, True),
    "1d-causal-stride-even": Problem((10,), (4,), (3,), (1,), (True,), 1, 2, 4, 4, False),
    "2d-rpb": Problem((7, 6), (3, 5), (1, 1), (1, 1), (False, False), 1, 2, 8, 8, True),
    "2d-dilation-rpb": Problem((8, 7), (3, 3), (1, 1), (2, 2), (False, False), 1, 1, 4, 4, True),
    "2d-stride-even": Problem((7, 9), (4, 2), (2, 2), (1, 2), (False, False), 1, 2, 4, 8, False),
    "2d-causal-gqa": Problem((6, 5), (3, 2), (1, 1), (1, 1), (True, False), 1, 4, 4, 4, False, 2),
    "3d-rpb": Problem((4, 5, 5), (3, 3, 3), (1,) * 3, (1,) * 3, (False,) * 3, 1, 2, 4, 4, True),
    "3d-dilation-causal": Problem(
        (4, 4, 6), (2, 3, 3), (1, 2, 1), (1, 1, 2), (True, False, False), 1, 1, 4, 4, False
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_triton_matches_reference_forward_and_backward(name):
    assert_matches_reference(CASES[name])


@settings(max_examples=10, deadline=None)
@given(problem=problems())
def test_triton_matches_reference_on_random_problems(problem):
    assert_matches_reference(problem)


def test_triton_float16_is_close():
    assert_matches_reference(CASES["2d-rpb"], torch.float16, tol=3e-2)


def test_triton_declines_bfloat16_in_the_interpreter():
    q = torch.randn(1, 8, 1, 4, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"cannot run bfloat16 in Triton's interpreter"):
        nat.na1d(q, q, q, 3, backend="triton")


def test_triton_declines_float64_with_a_reason():
    q = torch.randn(1, 8, 1, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^backend='triton' runs float32, bfloat16 and float16"):
        nat.na1d(q, q, q, 3, backend="triton")


def test_triton_declines_large_head_dim_with_a_reason():
    q = torch.randn(1, 8, 1, 160)
    with pytest.raises(ValueError, match=r"takes head_dim up to 128; got 160"):
        nat.na1d(q, q, q, 3, backend="triton")


def test_triton_reads_strided_qkv_slices_in_a_module():
    torch.manual_seed(0)
    module = nat.NeighborhoodAttention2D(16, 2, 3, dilation=2, backend="triton")
    x = torch.randn(1, 7, 8, 16, requires_grad=True)
    out = module(x)
    (grad_x,) = torch.autograd.grad(out.square().sum(), x)
    module.backend = "reference"
    expected = module(x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_x, expected_grad, rtol=1e-4, atol=1e-4)


def test_triton_op_is_one_graph_under_torch_compile():
    q, k, v, rpb = (t.requires_grad_() for t in CASES["2d-rpb"].tensors(torch.float32))

    def attend(q, k, v, rpb):
        return nat.na2d(q, k, v, (3, 5), rpb=rpb, backend="triton")

    compiled = torch.compile(attend, backend="aot_eager", fullgraph=True)
    out = compiled(q, k, v, rpb)
    grads = torch.autograd.grad(out.sum(), (q, k, v, rpb))
    expected = attend(q, k, v, rpb)
    expected_grads = torch.autograd.grad(expected.sum(), (q, k, v, rpb))
    torch.testing.assert_close(out, expected)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e)
