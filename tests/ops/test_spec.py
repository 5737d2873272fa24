"""Window geometry: the spec's rule, NATTEN 0.14's formulas, and its invariants."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nat.ops.reference import axis_relation
from nat.ops.spec import (
    NAParams,
    axis_rpb_start,
    axis_window,
    axis_window_start,
    inverse_window_radius,
    neighbor_table,
)


def natten014_window_start(index: int, length: int, kernel: int, dilation: int) -> int:
    """NATTEN 0.14's ``get_window_start`` (odd kernels, stride 1), transcribed from its kernels."""
    half = kernel // 2
    if dilation <= 1:
        return max(index - half, 0) + (index + half >= length) * (length - index - half - 1)
    if index - half * dilation < 0:
        return index % dilation
    if index + half * dilation >= length:
        imodd = index % dilation
        a = (length // dilation) * dilation
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * half * dilation
        return a + imodd - kernel * dilation
    return index - half * dilation


def natten014_pb_start(index: int, length: int, kernel: int, dilation: int) -> int:
    """NATTEN 0.14's ``get_pb_start``: the RPB index of the first neighbour."""
    half = kernel // 2
    if dilation <= 1:
        return (
            half
            + (index < half) * (half - index)
            + (index + half >= length) * (length - index - 1 - half)
        )
    if index - half * dilation < 0:
        return kernel - 1 - index // dilation
    if index + half * dilation >= length:
        return (length - index - 1) // dilation
    return half


@given(
    kernel=st.sampled_from([3, 5, 7, 9]),
    dilation=st.integers(1, 4),
    extra=st.integers(0, 12),
)
def test_windows_and_rpb_match_natten_014(kernel, dilation, extra):
    length = kernel * dilation + extra
    keys, valid, bias = axis_window(length, kernel, 1, dilation, False)
    for i in range(length):
        start = natten014_window_start(i, length, kernel, dilation)
        pb = natten014_pb_start(i, length, kernel, dilation)
        assert keys[i] == [start + t * dilation for t in range(kernel)]
        assert bias[i] == [pb + t for t in range(kernel)]
        assert all(valid[i])


@given(
    kernel=st.integers(2, 8),
    dilation=st.integers(1, 3),
    extra=st.integers(0, 10),
    data=st.data(),
)
def test_non_causal_window_has_exactly_kernel_keys_in_the_query_group(
    kernel, dilation, extra, data
):
    stride = data.draw(st.integers(1, kernel))
    length = kernel * dilation + extra
    keys, valid, _ = axis_window(length, kernel, stride, dilation, False)
    for i in range(length):
        assert all(valid[i])
        assert len(set(keys[i])) == kernel
        assert all(0 <= j < length and j % dilation == i % dilation for j in keys[i])


@given(kernel=st.integers(2, 8), stride_frac=st.floats(0, 1), extra=st.integers(0, 10))
def test_causal_window_never_looks_ahead(kernel, stride_frac, extra):
    stride = 1 + int(stride_frac * (kernel - 1))
    length = kernel + extra
    keys, valid, _ = axis_window(length, kernel, stride, 1, True)
    for i in range(length):
        real = [j for j, ok in zip(keys[i], valid[i], strict=True) if ok]
        assert i in real
        assert all(j <= i for j in real)
        assert len(real) <= kernel


def test_causal_stride_one_is_the_last_kernel_positions():
    keys, valid, _ = axis_window(6, 3, 1, 1, True)
    real = [[j for j, ok in zip(k, v, strict=True) if ok] for k, v in zip(keys, valid, strict=True)]
    assert real == [[0], [0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]


def test_even_kernel_takes_one_more_key_on_the_left():
    keys, _, _ = axis_window(8, 4, 1, 1, False)
    assert keys[4] == [2, 3, 4, 5]
    assert keys[0] == [0, 1, 2, 3]
    assert keys[7] == [4, 5, 6, 7]


@pytest.mark.parametrize("kernel", [2, 3, 4, 7])
def test_stride_equal_to_kernel_is_blocked_window_attention(kernel):
    length = 3 * kernel
    keys, _, _ = axis_window(length, kernel, kernel, 1, False)
    for i in range(length):
        block = i // kernel
        assert keys[i] == list(range(block * kernel, (block + 1) * kernel))


def test_strided_queries_share_their_leader_window():
    keys, _, _ = axis_window(11, 5, 3, 1, False)
    assert keys[0] == keys[1] == keys[2]
    assert keys[3] == keys[4] == keys[5]
    assert keys[3] == [2, 3, 4, 5, 6]


@given(
    length_extra=st.integers(0, 5),
    kernel=st.integers(2, 5),
    dilation=st.integers(1, 3),
    causal=st.booleans(),
    data=st.data(),
)
def test_enumerated_window_agrees_with_reference_predicate(
    length_extra, kernel, dilation, causal, data
):
    stride = data.draw(st.integers(1, kernel))
    length = kernel * dilation + length_extra
    keys, valid, bias = axis_window(length, kernel, stride, dilation, causal)
    relation, rpb_index = axis_relation(length, kernel, stride, dilation, causal)
    for i in range(length):
        real = sorted(j for j, ok in zip(keys[i], valid[i], strict=True) if ok)
        assert real == relation[i].nonzero().flatten().tolist()
        for j, ok, b in zip(keys[i], valid[i], bias[i], strict=True):
            if ok:
                assert rpb_index[i, j] == b


@given(
    length_extra=st.integers(0, 9),
    kernel=st.integers(2, 9),
    dilation=st.integers(1, 4),
    causal=st.booleans(),
    data=st.data(),
)
def test_closed_form_window_equals_the_table(length_extra, kernel, dilation, causal, data):
    stride = data.draw(st.integers(1, kernel))
    length = kernel * dilation + length_extra
    keys, valid, bias = axis_window(length, kernel, stride, dilation, causal)
    i = torch.arange(length)
    args = (length, kernel, stride, dilation, causal)
    t = torch.arange(kernel)
    closed_keys = axis_window_start(i, *args).unsqueeze(1) + t * dilation
    closed_valid = (closed_keys >= 0) & (closed_keys <= i.unsqueeze(1)) if causal else None
    closed_bias = axis_rpb_start(i, *args).unsqueeze(1) + t
    ok = torch.tensor(valid)
    if causal:
        assert torch.equal(closed_valid, ok)
    assert torch.equal(closed_keys[ok], torch.tensor(keys)[ok])
    assert torch.equal(closed_bias[ok], torch.tensor(bias)[ok])


@given(
    length_extra=st.integers(0, 9),
    kernel=st.integers(2, 9),
    dilation=st.integers(1, 3),
    causal=st.booleans(),
    data=st.data(),
)
def test_queries_attend_only_keys_within_the_inverse_radius(
    length_extra, kernel, dilation, causal, data
):
    stride = data.draw(st.integers(1, kernel))
    length = kernel * dilation + length_extra
    keys, valid, _ = axis_window(length, kernel, stride, dilation, causal)
    radius = inverse_window_radius(kernel, stride)
    distances = [
        abs(j - i) // dilation
        for i in range(length)
        for j, ok in zip(keys[i], valid[i], strict=True)
        if ok
    ]
    assert max(distances) <= radius


def test_neighbor_table_is_the_cartesian_product_of_axes():
    params = NAParams((3, 2), (1, 1), (1, 2), (False, False), 1.0)
    keys, valid, bias = neighbor_table((4, 5), params, torch.device("cpu"))
    rows, _, row_bias = axis_window(4, 3, 1, 1, False)
    cols, _, col_bias = axis_window(5, 2, 1, 2, False)
    assert valid is None
    assert keys.shape == (20, 6)
    query = 2 * 5 + 3  # (row 2, col 3)
    expected = [r * 5 + c for r in rows[2] for c in cols[3]]
    assert keys[query].tolist() == expected
    assert bias[query].tolist() == [rb * 3 + cb for rb in row_bias[2] for cb in col_bias[3]]
