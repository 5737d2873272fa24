"""The attention weights API agrees with what every backend computes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings

import nat
from nat.ops import available_backends, neighbors
from nat.ops.spec import check_window_args, neighbor_table

from .strategies import problems

BACKENDS = available_backends("cpu")  # the fused ones, then "reference"


def weighted_values(problem, weights, value):
    """``sum_p weights[..., p] * value[neighbour p]``, laid out as the operator's output."""
    params = check_window_args(problem.spatial, **problem.window_kwargs())
    keys, _, _ = neighbor_table(problem.spatial, params, value.device)
    heads, heads_kv = weights.shape[1], value.shape[-2]
    v = value.flatten(1, -3).repeat_interleave(heads // heads_kv, dim=2)  # [B, N, heads, Dv]
    gathered = v[:, keys.long()]  # [B, N, P, heads, Dv]
    w = weights.flatten(2, -2)  # [B, heads, N, P]
    out = torch.einsum("bhnp,bnphd->bnhd", w, gathered)
    return out.reshape(*value.shape[:-2], heads, value.shape[-1])


@settings(max_examples=25)
@given(problem=problems())
def test_weights_times_values_is_the_operator_on_every_backend(problem):
    q, k, v, rpb = problem.tensors(torch.float64)
    weights = nat.attention_weights(q, k, rpb=rpb, **problem.window_kwargs())
    expected = weighted_values(problem, weights, v)
    for backend in BACKENDS:
        out = nat.neighborhood_attention(
            q, k, v, rpb=rpb, backend=backend, **problem.window_kwargs()
        )
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10, msg=backend)


@settings(max_examples=25)
@given(problem=problems())
def test_rows_are_probabilities(problem):
    q, k, _, rpb = problem.tensors(torch.float64)
    weights = nat.attention_weights(q, k, rpb=rpb, **problem.window_kwargs())
    window = math.prod(problem.kernel_size)
    assert weights.shape == (problem.batch, problem.heads, *problem.spatial, window)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1], dtype=torch.float64))


@settings(max_examples=15)
@given(problem=problems(ndim=2))
def test_one_query_is_its_row_of_the_full_tensor(problem):
    q, k, _, rpb = problem.tensors(torch.float64)
    corner = tuple(s - 1 for s in problem.spatial)
    full = nat.attention_weights(q, k, rpb=rpb, **problem.window_kwargs())
    coords, weights = nat.query_attention_weights(q, k, corner, rpb=rpb, **problem.window_kwargs())
    torch.testing.assert_close(weights, full[:, :, corner[0], corner[1]])
    expected, _ = neighbors(problem.spatial, corner, **problem.window_kwargs())
    assert torch.equal(coords, expected)


def test_neighbors_shift_inwards_at_a_corner_and_spread_by_dilation():
    coords, valid = neighbors((12, 12), (0, 11), kernel_size=3, dilation=2)
    rows = sorted({int(r) for r in coords[:, 0]})
    cols = sorted({int(c) for c in coords[:, 1]})
    assert (rows, cols, bool(valid.all())) == ([0, 2, 4], [7, 9, 11], True)


def test_causal_slots_before_the_start_are_empty_and_weigh_nothing():
    q = torch.randn(1, 6, 1, 4, dtype=torch.float64)
    _, valid = neighbors((6,), (1,), kernel_size=4, is_causal=True)
    _, weights = nat.query_attention_weights(q, q, (1,), kernel_size=4, is_causal=True)
    assert valid.tolist() == [False, False, True, True]
    assert weights[0, 0, :2].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    ("position", "message"),
    [((6, 0), r"position=\(6, 0\)"), ((0,), r"position=\(0,\)"), ((0, -1), r"position=\(0, -1\)")],
)
def test_a_position_outside_the_input_is_refused(position, message):
    q = torch.randn(1, 6, 6, 1, 4)
    with pytest.raises(ValueError, match=message):
        nat.query_attention_weights(q, q, position, kernel_size=3)


def test_window_errors_are_the_operators():
    q = torch.randn(1, 6, 6, 1, 4)
    with pytest.raises(ValueError, match="kernel_size \\* dilation = 7 \\* 1 = 7"):
        nat.attention_weights(q, q, kernel_size=7)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@settings(max_examples=10)
@given(problem=problems(ndim=2))
def test_weights_match_every_cuda_backend(problem):
    q, k, v, rpb = (None if t is None else t.cuda() for t in problem.tensors(torch.float32))
    weights = nat.attention_weights(q, k, rpb=rpb, **problem.window_kwargs())
    expected = weighted_values(problem, weights, v.float())
    for backend in available_backends("cuda"):
        out = nat.neighborhood_attention(
            q, k, v, rpb=rpb, backend=backend, **problem.window_kwargs()
        )
        torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5, msg=backend)
