"""The FlexAttention backend on the CPU: forward and log-sum-exp against the reference.

FlexAttention's backward is CUDA-only; ``test_cuda.py`` covers it on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import nat
from nat.ops import flex
from nat.ops.spec import check_window_args

from .strategies import problems

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


@settings(max_examples=10, deadline=None)
@given(problem=problems())
def test_flex_forward_and_lse_match_the_reference(problem):
    q, k, v, rpb = problem.tensors(torch.float32)
    kwargs = dict(rpb=rpb, return_lse=True, **problem.window_kwargs())
    out, lse = nat.neighborhood_attention(q, k, v, backend="flex", **kwargs)
    expected, expected_lse = nat.neighborhood_attention(q, k, v, backend="reference", **kwargs)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-5, atol=1e-5)


def test_block_masks_are_built_once_per_geometry():
    params = check_window_args((6, 7), 3, dilation=(1, 2))
    first = flex.block_mask((6, 7), params, torch.device("cpu"))
    assert flex.block_mask((6, 7), params, torch.device("cpu")) is first


def test_flex_declines_training_on_the_cpu_with_a_reason():
    q = torch.randn(1, 8, 1, 4, requires_grad=True)
    with pytest.raises(ValueError, match=r"^backend='flex' has no backward on cpu"):
        nat.na1d(q, q, q, 3, backend="flex")
