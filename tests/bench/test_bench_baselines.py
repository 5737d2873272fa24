"""The baselines compute what they claim, on small shapes."""

import pytest
import torch

import nat
from nat.bench import baselines


def _qkv(batch, height, width, heads, dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn((batch, height, width, heads, dim), generator=gen, dtype=torch.float64)
        for _ in range(3)
    )


@pytest.mark.parametrize(("height", "width", "kernel_size"), [(9, 11, 3), (8, 7, 5), (7, 7, 7)])
def test_unfold_na_matches_reference_with_rpb(height, width, kernel_size):
    q, k, v = _qkv(2, height, width, 2, 8)
    rpb = torch.randn((2, 2 * kernel_size - 1, 2 * kernel_size - 1), dtype=torch.float64)
    expected = nat.na2d(q, k, v, kernel_size, rpb=rpb, backend="reference")
    torch.testing.assert_close(baselines.unfold_na2d(q, k, v, kernel_size, rpb=rpb), expected)


def test_unfold_na_gradients_match_reference():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 8, 9, 2, 4))
    rpb = torch.randn((2, 9, 9), dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(baselines.unfold_na2d(q, k, v, 5, rpb=rpb).sum(), (q, k, v, rpb))
    expected = torch.autograd.grad(
        nat.na2d(q, k, v, 5, rpb=rpb, backend="reference").sum(), (q, k, v, rpb)
    )
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)


def _dense_window_attention(q, k, v, window, rpb):
    """Masked dense attention: a query sees the keys of its own window, biased by key - query."""
    batch, height, width, heads, dim = q.shape
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    same_window = ((rows[:, None] // window) == (rows[None, :] // window)) & (
        (cols[:, None] // window) == (cols[None, :] // window)
    )
    d_row = rows[None, :] - rows[:, None] + window - 1
    d_col = cols[None, :] - cols[:, None] + window - 1
    d_row, d_col = d_row.clamp(0, 2 * window - 2), d_col.clamp(0, 2 * window - 2)
    flat = [t.reshape(batch, height * width, heads, -1).transpose(1, 2) for t in (q, k, v)]
    scores = flat[0] @ flat[1].transpose(-1, -2) * dim**-0.5 + rpb[:, d_row, d_col]
    scores = scores.masked_fill(~same_window, float("-inf"))
    out = scores.softmax(-1) @ flat[2]
    return out.transpose(1, 2).reshape(v.shape)


@pytest.mark.parametrize(("height", "width", "window"), [(6, 9, 3), (14, 7, 7), (4, 4, 2)])
def test_window_attention_matches_masked_dense_attention(height, width, window):
    q, k, v = _qkv(2, height, width, 3, 4)
    rpb = torch.randn((3, 2 * window - 1, 2 * window - 1), dtype=torch.float64)
    expected = _dense_window_attention(q, k, v, window, rpb)
    torch.testing.assert_close(baselines.window_attention(q, k, v, window, rpb=rpb), expected)


def test_window_attention_pads_like_swin():
    """A map the window does not tile is zero-padded at the end, attended, and cropped."""
    q, k, v = _qkv(1, 5, 7, 2, 4)
    rpb = torch.randn((2, 5, 5), dtype=torch.float64)
    padded = [torch.nn.functional.pad(t, (0, 0, 0, 0, 0, 2, 0, 1)) for t in (q, k, v)]
    expected = baselines.window_attention(*padded, 3, rpb=rpb)[:, :5, :7]
    torch.testing.assert_close(baselines.window_attention(q, k, v, 3, rpb=rpb), expected)


def test_dense_attention_is_global_softmax_attention():
    q, k, v = _qkv(2, 4, 5, 2, 8)
    flat = [t.reshape(2, 20, 2, 8).transpose(1, 2) for t in (q, k, v)]
    expected = ((flat[0] @ flat[1].transpose(-1, -2)) * 8**-0.5).softmax(-1) @ flat[2]
    torch.testing.assert_close(
        baselines.dense_attention(q, k, v), expected.transpose(1, 2).reshape(q.shape)
    )


def test_natten_adapter_matches_nat_without_rpb():
    pytest.importorskip("natten")
    q, k, v = (t.float() for t in _qkv(1, 9, 9, 2, 16))
    torch.testing.assert_close(
        baselines.natten_na2d(q, k, v, 5),
        nat.na2d(q, k, v, 5, backend="reference"),
        atol=1e-4,
        rtol=1e-4,
    )
