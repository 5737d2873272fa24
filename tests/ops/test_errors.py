"""Every invalid call raises ValueError/TypeError naming the argument, its value and the rule."""

from __future__ import annotations

import pytest
import torch

import nat


def qkv(shape=(1, 8, 9, 2, 4), dtype=torch.float32):
    return tuple(torch.randn(shape, dtype=dtype) for _ in "qkv")


def raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


def test_kernel_smaller_than_two():
    raises(ValueError, r"kernel_size=1: every kernel size must be >= 2", nat.na2d, *qkv(), 1)


def test_kernel_times_dilation_larger_than_input():
    raises(
        ValueError,
        r"kernel_size \* dilation = 3 \* 3 = 9 is larger than the input \(height 8\)",
        nat.na2d,
        *qkv(),
        3,
        dilation=3,
    )


def test_stride_larger_than_kernel():
    raises(
        ValueError,
        r"stride=4: .*1 <= stride <= kernel_size \(kernel_size=3\)",
        nat.na2d,
        *qkv(),
        3,
        stride=4,
    )


def test_dilation_below_one():
    raises(ValueError, r"dilation=0: every dilation must be >= 1", nat.na2d, *qkv(), 3, dilation=0)


def test_non_integer_kernel():
    raises(TypeError, r"kernel_size=3.0 must be an integer", nat.na2d, *qkv(), 3.0)


def test_bool_is_not_an_integer_size():
    raises(TypeError, r"dilation=True must be an integer", nat.na2d, *qkv(), 3, dilation=True)


def test_non_bool_causal():
    raises(TypeError, r"is_causal=1 must be a bool", nat.na2d, *qkv(), 3, is_causal=1)


def test_tuple_of_wrong_length():
    raises(
        ValueError,
        r"kernel_size=\(3, 3, 3\) has 3 entries; expected 2",
        nat.na2d,
        *qkv(),
        (3, 3, 3),
    )


def test_wrong_rank():
    q, k, v = qkv((1, 8, 2, 4))
    raises(
        ValueError,
        r"query has shape \(1, 8, 2, 4\) \(rank 4\); 2-D .* expects rank 5",
        nat.na2d,
        q,
        k,
        v,
        3,
    )


def test_rank_outside_1_to_3_for_the_generic_function():
    q = torch.randn(1, 4, 4, 4, 4, 1, 2)
    raises(ValueError, r"with 1, 2 or 3 spatial axes", nat.neighborhood_attention, q, q, q, 3)


def test_key_shape_mismatch():
    q, _, v = qkv()
    k = torch.randn(1, 8, 9, 2, 5)
    raises(
        ValueError,
        r"key has shape \(1, 8, 9, 2, 5\) but query has \(1, 8, 9, 2, 4\)",
        nat.na2d,
        q,
        k,
        v,
        3,
    )


def test_value_shape_mismatch():
    q, k, _ = qkv()
    v = torch.randn(1, 8, 9, 3, 4)
    raises(
        ValueError,
        r"value has shape \(1, 8, 9, 3, 4\); all but its last axis",
        nat.na2d,
        q,
        k,
        v,
        3,
    )


def test_dtype_mismatch():
    q, k, v = qkv()
    raises(
        ValueError,
        r"key has dtype torch.float64 but query has torch.float32",
        nat.na2d,
        q,
        k.double(),
        v,
        3,
    )


def test_integer_dtype():
    q = torch.zeros(1, 8, 9, 2, 4, dtype=torch.int64)
    raises(TypeError, r"query has dtype torch.int64", nat.na2d, q, q, q, 3)


def test_device_mismatch():
    q, k, v = qkv()
    raises(ValueError, r"value is on meta but query is on cpu", nat.na2d, q, k, v.to("meta"), 3)


def test_not_a_tensor():
    _, k, v = qkv()
    raises(TypeError, r"query must be a torch.Tensor", nat.na2d, [1.0], k, v, 3)


def test_rpb_with_even_kernel():
    rpb = torch.zeros(2, 7, 7)
    raises(
        ValueError,
        r"rpb is only defined for odd kernel sizes; got kernel_size=\(4, 4\)",
        nat.na2d,
        *qkv(),
        4,
        rpb=rpb,
    )


def test_rpb_with_stride():
    rpb = torch.zeros(2, 5, 5)
    raises(
        ValueError,
        r"rpb is only defined for stride 1; got stride=\(2, 2\)",
        nat.na2d,
        *qkv(),
        3,
        stride=2,
        rpb=rpb,
    )


def test_rpb_with_causal():
    rpb = torch.zeros(2, 5, 5)
    raises(
        ValueError,
        r"rpb is not defined with causal masking",
        nat.na2d,
        *qkv(),
        3,
        is_causal=True,
        rpb=rpb,
    )


def test_rpb_of_wrong_shape():
    rpb = torch.zeros(2, 5, 7)
    raises(
        ValueError, r"rpb has shape \(2, 5, 7\); expected \(2, 5, 5\)", nat.na2d, *qkv(), 3, rpb=rpb
    )


def test_rpb_with_wrong_head_count():
    rpb = torch.zeros(3, 5, 5)
    raises(
        ValueError,
        r"rpb has shape \(3, 5, 5\); expected \(2, 5, 5\).*for 2 heads",
        nat.na2d,
        *qkv(),
        3,
        rpb=rpb,
    )


def test_rpb_dtype_mismatch():
    rpb = torch.zeros(2, 5, 5, dtype=torch.float64)
    raises(
        ValueError,
        r"rpb has dtype torch.float64 but query has torch.float32",
        nat.na2d,
        *qkv(),
        3,
        rpb=rpb,
    )


def test_unknown_backend():
    raises(
        ValueError, r"backend='cuda-magic' is not one of", nat.na2d, *qkv(), 3, backend="cuda-magic"
    )


def test_non_finite_scale():
    raises(ValueError, r"scale=inf must be finite", nat.na2d, *qkv(), 3, scale=float("inf"))


def test_module_rejects_rpb_with_even_kernel():
    raises(
        ValueError,
        r"rel_pos_bias=True is only defined for odd kernel sizes; got kernel_size=\(4, 4\)",
        nat.NeighborhoodAttention2D,
        8,
        2,
        4,
    )


def test_module_rejects_indivisible_heads():
    raises(
        ValueError,
        r"dim=10 must be divisible by num_heads=3",
        nat.NeighborhoodAttention2D,
        10,
        3,
        3,
    )


def test_module_rejects_wrong_input_shape():
    module = nat.NeighborhoodAttention2D(8, 2, 3)
    raises(
        ValueError,
        r"input has shape \(1, 5, 5, 6\); expected channels-last",
        module,
        torch.randn(1, 5, 5, 6),
    )
