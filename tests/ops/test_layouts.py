"""Every backend reads its inputs through their strides: any layout gives the contiguous result.

Inputs reach the backends as the caller made them: slices of a packed qkv projection, expanded
(stride 0) or permuted biases, channels-last copies. Each test runs the same call on contiguous
copies of the same values and expects the same answer.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nat
from nat.ops import available_backends

from .strategies import Problem, layouts, problems

BACKENDS = available_backends("cpu")
"""Every backend on CPU, ``reference`` included."""

TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}


def shapes(problem: Problem) -> dict[str, tuple[int, ...]]:
    q = (problem.batch, *problem.spatial, problem.heads, problem.head_dim)
    k = (*q[:-2], problem.heads_kv, problem.head_dim)
    v = (*k[:-1], problem.head_dim_v)
    out = (*q[:-1], problem.head_dim_v)
    named = {"query": q, "key": k, "value": v, "grad_out": out}
    if problem.use_rpb:
        named["rpb"] = (problem.heads, *(2 * k - 1 for k in problem.kernel_size))
    return named


def forward(problem: Problem, tensors: dict, backend: str) -> torch.Tensor:
    return nat.neighborhood_attention(
        tensors["query"],
        tensors["key"],
        tensors["value"],
        rpb=tensors.get("rpb"),
        backend=backend,
        **problem.window_kwargs(),
    )


def forward_and_grads(problem: Problem, tensors: dict, backend: str):
    """Output and gradients of every input (q, k, v, rpb) for the given ``grad_out``."""
    inputs = {n: t.detach().requires_grad_() for n, t in tensors.items() if n != "grad_out"}
    out = forward(problem, inputs, backend)
    grads = torch.autograd.grad(out, list(inputs.values()), tensors["grad_out"])
    return out.detach(), grads


@st.composite
def laid_out_problems(draw):
    """A problem, a dtype, and every input in a random layout (with its values)."""
    # Half the problems carry an rpb: the random ones rarely allow it.
    problem = draw(problems(rpb=draw(st.booleans())))
    if draw(st.booleans()):  # the head dim of the vectorised float32 kernels
        problem.head_dim = problem.head_dim_v = 16
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    tensors = {}
    for name, shape in shapes(problem).items():
        layout = draw(layouts(len(shape)), label=name)
        values = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        tensors[name] = layout.place(values)
    return problem, dtype, tensors


def assert_close(actual, expected, dtype) -> None:
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30)
@given(case=laid_out_problems())
def test_any_layout_of_any_input_gives_the_contiguous_result(backend, case):
    problem, dtype, tensors = case
    contiguous = {n: t.contiguous() for n, t in tensors.items()}
    with torch.no_grad():  # inference calls the backend directly
        assert_close(
            forward(problem, tensors, backend), forward(problem, contiguous, backend), dtype
        )
    out, grads = forward_and_grads(problem, tensors, backend)  # the op, autograd and backward
    expected, expected_grads = forward_and_grads(problem, contiguous, backend)
    assert_close(out, expected, dtype)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@settings(max_examples=30)
@given(case=laid_out_problems(), data=st.data())
def test_the_backward_op_reads_any_layout_of_its_inputs(backend, case, data):
    """Saved tensors and ``grad_out`` reach the backward in whatever layout autograd keeps."""
    problem, dtype, tensors = case
    window = (
        list(problem.kernel_size),
        list(problem.stride),
        list(problem.dilation),
        list(problem.is_causal),
        0.5,
        backend,
    )
    q, k, v = (tensors[n].contiguous() for n in ("query", "key", "value"))
    rpb = tensors.get("rpb")
    rpb = None if rpb is None else rpb.contiguous()
    out, lse = torch.ops.nat.na_forward(q, k, v, rpb, *window, True)
    args = {
        "grad_out": tensors["grad_out"],
        "query": tensors["query"],
        "key": tensors["key"],
        "value": tensors["value"],
        "rpb": tensors.get("rpb"),
        "out": data.draw(layouts(out.dim()), label="out").place(out),
        "lse": data.draw(layouts(lse.dim()), label="lse").place(lse),
    }
    grads = torch.ops.nat.na_backward(*args.values(), *window)
    contiguous = (None if t is None else t.contiguous() for t in args.values())
    expected = torch.ops.nat.na_backward(*contiguous, *window)
    for grad, expected_grad in zip(grads, expected, strict=True):
        assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_permuted_rpb_gives_the_contiguous_result(backend, ndim):
    """``rpb`` stored heads-last, as a permute of ``[*(2K - 1), heads]`` makes it."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, *(7,) * ndim, 2, 4, generator=g) for _ in "qkv")
    rpb = torch.randn(*(5,) * ndim, 2, generator=g).movedim(-1, 0)
    with torch.no_grad():
        out = nat.neighborhood_attention(q, k, v, 3, rpb=rpb, backend=backend)
        expected = nat.neighborhood_attention(q, k, v, 3, rpb=rpb.contiguous(), backend=backend)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


# Reading an rpb expanded over heads as if it were contiguous runs ``(heads - 1) * R`` elements
# past its storage: NaN, or a segmentation fault that would end the test run. Hence a subprocess.
EXPANDED_RPB = textwrap.dedent(
    """
    import sys, torch, nat
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 4, 4096, 1, generator=g)
    rpb = torch.randn(1, 5, 5, generator=g).expand(4096, -1, -1)
    for backend in sys.argv[1:]:
        with torch.no_grad():
            out = nat.na2d(q, q, q, 3, rpb=rpb, backend=backend)
            expected = nat.na2d(q, q, q, 3, rpb=rpb.contiguous(), backend=backend)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6, msg=lambda m: backend + m)
    """
)


def test_rpb_expanded_over_heads_is_read_within_its_storage():
    run = subprocess.run(
        [sys.executable, "-c", EXPANDED_RPB, *BACKENDS], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
