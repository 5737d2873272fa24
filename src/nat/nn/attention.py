"""Neighborhood attention layers: ``NeighborhoodAttention1D/2D/3D``.

Parameter names (``qkv``, ``rpb``, ``proj``) and the small-input padding rule follow NATTEN 0.14,
so NAT/DiNAT checkpoints and NATTEN 0.14 module state dicts load unchanged. The signature is the
published NAT code's, ``(dim, num_heads, kernel_size, dilation, ...)``; NATTEN 0.21's modules take
``(embed_dim, num_heads, kernel_size, stride, dilation, ...)`` and have no ``rpb``. ``embed_dim=``
is accepted as NATTEN spells it; pass ``stride`` and ``dilation`` by keyword to write code that
runs on both (see ``docs/neighborhood-attention.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import spec
from ..ops.dispatch import na_packed_op
from .linear import Linear

__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D"]


class _NeighborhoodAttention(nn.Module):
    ndim: int

    def __init__(
        self,
        dim: int | None = None,
        num_heads: int | None = None,
        kernel_size: int | Sequence[int] | None = None,
        dilation: int | Sequence[int] = 1,
        is_causal: bool | Sequence[bool] = False,
        rel_pos_bias: bool = True,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        stride: int | Sequence[int] = 1,
        backend: str | None = None,
        *,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        if (dim is None) == (embed_dim is None):
            raise TypeError(
                f"pass the channel count as dim or as embed_dim (NATTEN's name), exactly once; "
                f"got dim={dim!r}, embed_dim={embed_dim!r}"
            )
        dim = dim if embed_dim is None else embed_dim
        for name, v in (("num_heads", num_heads), ("kernel_size", kernel_size)):
            if v is None:
                raise TypeError(f"{name} is required")
        for name, v in (("dim", dim), ("num_heads", num_heads)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name}={v!r} must be an integer")
            if v < 1:
                raise ValueError(f"{name}={v!r} must be >= 1")
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        # qk_scale=0.0 means zero, as in the functional ops (NAT's `qk_scale or default` did not).
        self.scale = self.head_dim**-0.5 if qk_scale is None else qk_scale
        self.kernel_size = spec.normalize_tuple("kernel_size", kernel_size, self.ndim)
        self.dilation = spec.normalize_tuple("dilation", dilation, self.ndim)
        self.stride = spec.normalize_tuple("stride", stride, self.ndim)
        self.is_causal = spec.normalize_tuple("is_causal", is_causal, self.ndim, kind=bool)
        # Validate the window once against the smallest input it can run on (the padded one).
        spec.check_window_args(
            tuple(k * d for k, d in zip(self.kernel_size, self.dilation, strict=True)),
            self.kernel_size,
            self.stride,
            self.dilation,
            self.is_causal,
        )
        self.backend = backend
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        if rel_pos_bias:
            spec.check_rpb_window(
                self.kernel_size, self.stride, self.is_causal, name="rel_pos_bias=True"
            )
            self.rpb = nn.Parameter(torch.zeros(num_heads, *(2 * k - 1 for k in self.kernel_size)))
            nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self._params = spec.NAParams(
            self.kernel_size, self.stride, self.dilation, self.is_causal, self.scale
        )

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``[B, *spatial, dim]`` (channels last)."""
        if x.dim() != self.ndim + 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"input has shape {tuple(x.shape)}; expected channels-last "
                f"[batch, {self.ndim} spatial axes, dim={self.dim}]"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, *spatial, dim]`` -> ``[B, *spatial, dim]``."""
        self.check_input(x)
        spatial = x.shape[1:-1]
        window = [k * d for k, d in zip(self.kernel_size, self.dilation, strict=True)]
        pad = [max(0, w - s) for w, s in zip(window, spatial, strict=True)]
        if any(pad):
            # F.pad takes (last axis first) pairs; channels come last and are not padded.
            x = F.pad(x, [0, 0, *(p for axis in reversed(pad) for p in (0, axis))])
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))
        dropout = self.attn_drop if self.training else 0.0
        out = na_packed_op(qkv, self.rpb, self._params, self.backend, dropout=dropout)
        out = out.flatten(-2)
        if any(pad):
            out = out[(slice(None), *(slice(0, s) for s in spatial))]
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
            f"dilation={self.dilation}, stride={self.stride}, is_causal={self.is_causal}, "
            f"rel_pos_bias={self.rpb is not None}"
        )


class NeighborhoodAttention1D(_NeighborhoodAttention):
    """1-D neighborhood attention: ``[B, L, dim]`` -> ``[B, L, dim]``."""

    ndim = 1


class NeighborhoodAttention2D(_NeighborhoodAttention):
    """2-D neighborhood attention: ``[B, H, W, dim]`` -> ``[B, H, W, dim]``."""

    ndim = 2


class NeighborhoodAttention3D(_NeighborhoodAttention):
    """3-D neighborhood attention: ``[B, T, H, W, dim]`` -> ``[B, T, H, W, dim]``."""

    ndim = 3
