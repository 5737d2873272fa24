"""The methods neighborhood attention is measured against, on NA's own tensors.

Every function takes ``query``/``key``/``value`` ``[B, H, W, heads, D]`` and returns
``[B, H, W, heads, D]``, so one set of inputs runs through all of them:

- :func:`unfold_na2d`: neighborhood attention the way the NAT paper's pure-PyTorch version
  computes it (``F.unfold`` keys and values into ``k * k`` neighbourhoods), the naive baseline.
- :func:`window_attention`: Swin's window self-attention (WSA) with relative positional bias, the
  cost NA is claimed to match.
- :func:`dense_attention`: ``F.scaled_dot_product_attention`` over all ``H * W`` tokens.
- :func:`natten_na2d`: NATTEN's ``na2d`` when NATTEN is installed (it has no RPB).
"""

from __future__ import annotations

import functools
import importlib.util
import warnings

import torch
import torch.nn.functional as F

__all__ = [
    "dense_attention",
    "natten_available",
    "natten_na2d",
    "natten_version",
    "unfold_na2d",
    "window_attention",
]


def _border_starts(length: int, kernel_size: int, device: torch.device) -> torch.Tensor:
    """First key of each query's window along one axis ``[length]``: shifted inwards at borders."""
    return (torch.arange(length, device=device) - kernel_size // 2).clamp(0, length - kernel_size)


@functools.lru_cache(maxsize=64)
def _unfold_rpb_index(
    height: int, width: int, kernel_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices ``[H, 1, k, 1]``, ``[1, W, 1, k]`` into a ``[2k-1, 2k-1]`` table."""
    offsets = torch.arange(kernel_size, device=device)

    def axis_index(length: int) -> torch.Tensor:
        positions = torch.arange(length, device=device)
        starts = _border_starts(length, kernel_size, device)
        return starts[:, None] + offsets[None, :] - positions[:, None] + kernel_size - 1

    rows, cols = axis_index(height), axis_index(width)  # [H, k], [W, k]
    return rows[:, None, :, None], cols[None, :, None, :]


def _unfold_rpb(rpb: torch.Tensor, height: int, width: int, kernel_size: int) -> torch.Tensor:
    """Bias ``[heads, H, W, k*k]`` of each neighbourhood, from ``rpb [heads, 2k-1, 2k-1]``."""
    rows, cols = _unfold_rpb_index(height, width, kernel_size, rpb.device)
    bias = rpb[:, rows, cols]  # [heads, H, W, k, k]
    return bias.reshape(rpb.shape[0], height, width, kernel_size * kernel_size)


def _neighbourhoods(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``[B, H, W, heads, D]`` -> each token's ``k x k`` neighbourhood ``[B, heads, H, W, k*k, D]``.

    ``F.unfold`` without padding yields the ``(H-k+1) x (W-k+1)`` windows that lie inside the map;
    replicate-padding that grid of windows by ``k // 2`` hands border queries the nearest inside
    window, which is exactly neighborhood attention's inward-shifted border window.
    """
    batch, height, width, heads, dim = x.shape
    area = kernel_size * kernel_size
    channels = x.permute(0, 3, 4, 1, 2).reshape(batch, heads * dim, height, width)
    windows = F.unfold(channels, kernel_size)  # [B, heads*D*k*k, (H-k+1)*(W-k+1)]
    windows = windows.view(batch, heads * dim * area, height - kernel_size + 1, -1)
    half = kernel_size // 2
    windows = F.pad(windows, (half, half, half, half), mode="replicate")  # [B, C*k*k, H, W]
    windows = windows.view(batch, heads, dim, area, height, width)
    return windows.permute(0, 1, 4, 5, 3, 2)


def unfold_na2d(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    scale: float | None = None,
    rpb: torch.Tensor | None = None,
) -> torch.Tensor:
    """2-D neighborhood attention by unfolding keys and values (odd kernel, no dilation).

    Materialises ``k * k`` copies of the keys and values, as the NAT paper's pure-PyTorch
    implementation did. ``rpb`` ``[heads, 2k-1, 2k-1]``.
    """
    height, width, dim = query.shape[1], query.shape[2], query.shape[-1]
    if kernel_size % 2 == 0 or kernel_size > min(height, width):
        raise ValueError(
            f"unfold_na2d needs an odd kernel_size no larger than the map, got {kernel_size} "
            f"for a {height}x{width} input"
        )
    scale = dim**-0.5 if scale is None else scale
    q = query.permute(0, 3, 1, 2, 4).unsqueeze(-2)  # [B, heads, H, W, 1, D]
    keys = _neighbourhoods(key, kernel_size)  # [B, heads, H, W, k*k, D]
    values = _neighbourhoods(value, kernel_size)
    scores = (q @ keys.transpose(-1, -2)) * scale  # [B, heads, H, W, 1, k*k]
    if rpb is not None:
        scores = scores + _unfold_rpb(rpb, height, width, kernel_size).unsqueeze(-2)
    out = scores.softmax(dim=-1) @ values  # [B, heads, H, W, 1, D]
    return out.squeeze(-2).permute(0, 2, 3, 1, 4).contiguous()


@functools.lru_cache(maxsize=16)
def _window_rpb_index(window: int, device: torch.device) -> torch.Tensor:
    """Index ``[w*w, w*w]`` into a flattened ``[2w-1, 2w-1]`` table (Swin keeps it as a buffer)."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ).flatten(1)  # [2, w*w]
    relative = coords[:, None, :] - coords[:, :, None] + window - 1  # key minus query, [2, n, n]
    return (relative[0] * (2 * window - 1) + relative[1]).to(device)


def window_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    window_size: int,
    scale: float | None = None,
    rpb: torch.Tensor | None = None,
) -> torch.Tensor:
    """Swin's window self-attention: attention inside non-overlapping ``w x w`` windows.

    Window partition, ``q @ k^T * scale + rpb``, softmax, ``@ v``, window reverse. A map that the
    window does not tile is zero-padded at the end and cropped afterwards, as Swin does (the padded
    tokens take part as keys, unmasked). ``rpb`` ``[heads, 2w-1, 2w-1]`` is indexed by key minus
    query offset, the same convention as neighborhood attention's.
    """
    batch, height, width, heads, dim = query.shape
    scale = dim**-0.5 if scale is None else scale
    pad_h, pad_w = -height % window_size, -width % window_size
    padded_h, padded_w = height + pad_h, width + pad_w
    rows, cols = padded_h // window_size, padded_w // window_size
    area = window_size * window_size

    def partition(x: torch.Tensor) -> torch.Tensor:
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, 0, 0, pad_w, 0, pad_h))
        x = x.view(batch, rows, window_size, cols, window_size, heads, x.shape[-1])
        return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(batch * rows * cols, heads, area, -1)

    q, k, v = partition(query), partition(key), partition(value)
    scores = (q @ k.transpose(-1, -2)) * scale  # [B * windows, heads, w*w, w*w]
    if rpb is not None:
        index = _window_rpb_index(window_size, rpb.device)
        scores = scores + rpb.reshape(heads, -1)[:, index]
    out = scores.softmax(dim=-1) @ v  # [B * windows, heads, w*w, Dv]
    out = out.view(batch, rows, cols, heads, window_size, window_size, -1)
    out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(batch, padded_h, padded_w, heads, -1)
    return out[:, :height, :width].contiguous()


def dense_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Global self-attention over all tokens of ``[B, *spatial, heads, D]`` (PyTorch's fused
    SDPA; no bias)."""
    shape = value.shape

    def tokens(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1, -3).transpose(1, 2)  # [B, heads, N, D]

    out = F.scaled_dot_product_attention(tokens(query), tokens(key), tokens(value), scale=scale)
    return out.transpose(1, 2).reshape(shape)


def natten_available() -> bool:
    """Whether NATTEN can be imported (it is optional and not a dependency)."""
    return importlib.util.find_spec("natten") is not None


def natten_version() -> str | None:
    """NATTEN's version, or ``None`` when it is not installed."""
    if not natten_available():
        return None
    import natten

    return getattr(natten, "__version__", "unknown")


def natten_na2d(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    scale: float | None = None,
) -> torch.Tensor:
    """NATTEN's ``natten.functional.na2d`` (NATTEN >= 0.20 layout, which is ours; no RPB)."""
    from natten.functional import na2d

    with warnings.catch_warnings():
        # On CPU NATTEN runs Flex attention uncompiled and warns about it on every call.
        warnings.simplefilter("ignore")
        return na2d(query, key, value, kernel_size=kernel_size, scale=scale)
