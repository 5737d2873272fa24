"""The fused GPU backend: neighborhood attention in Triton (:mod:`.kernels`).

Runs on CUDA devices with Triton installed, and on CPU tensors when the kernels were loaded with
``TRITON_INTERPRET=1`` (Triton's interpreter: slow, for tests). :func:`can_run` is the per-call
capability check the dispatcher uses for ``"auto"`` and for the error of an explicit
``backend="triton"``.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import sys
from types import ModuleType

import torch

from ..spec import NAParams, inverse_window_radius
from ..torch_backend import heads_last

__all__ = ["MAX_HEAD_DIM", "can_run", "is_available", "load", "na_backward", "na_forward"]

MAX_HEAD_DIM = 128
"""Largest query/key and value head_dim the kernels take (a tile holds a whole head)."""

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_GRID_Y = 65535
_QUERY_TILE = 64
"""Queries per program: a box of this many positions, spread over the axes (see ``_tile``)."""


@functools.cache
def load() -> ModuleType:
    """The kernels module, imported on first use (``TRITON_INTERPRET`` is read then)."""
    from . import kernels

    return kernels


@torch.compiler.assume_constant_result
def is_available() -> bool:
    """Whether Triton is installed and either a CUDA device or the interpreter can run it."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or _interpreted()


@torch.compiler.assume_constant_result
def _interpreted() -> bool:
    """Whether the kernels run (or, not yet loaded, would run) in Triton's interpreter."""
    if f"{__name__}.kernels" in sys.modules:
        return load().INTERPRETED
    return os.environ.get("TRITON_INTERPRET") == "1"


def can_run(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    params: NAParams,
) -> str | None:
    """``None`` when the kernels run this call, otherwise why not."""
    device = query.device
    if device.type != "cuda" and not (device.type == "cpu" and _interpreted()):
        return f"runs on cuda (or on cpu under TRITON_INTERPRET=1), but the inputs are on {device}"
    if query.dtype not in _DTYPES:
        return f"runs float32, bfloat16 and float16, not {query.dtype}"
    if query.dtype == torch.bfloat16 and device.type == "cpu":
        return "cannot run bfloat16 in Triton's interpreter (its tl.dot misreads bfloat16)"
    if query.shape[-1] > MAX_HEAD_DIM or value.shape[-1] > MAX_HEAD_DIM:
        return (
            f"takes head_dim up to {MAX_HEAD_DIM}; got {query.shape[-1]} (query/key) and "
            f"{value.shape[-1]} (value)"
        )
    if query.shape[0] * query.shape[-2] > _MAX_GRID_Y:
        return (
            f"launches one program row per batch x head, at most {_MAX_GRID_Y}; got "
            f"{query.shape[0]} x {query.shape[-2]}"
        )
    return None


def _padded(shape: tuple[int, ...], fill: int) -> tuple[int, ...]:
    """A per-axis tuple of a 1-D or 2-D problem as the kernels' 3-D one (leading axes added)."""
    return (fill,) * (3 - len(shape)) + tuple(shape)


class _Geometry:
    """The kernels' 3-D view of a call: per-axis arguments, tile box and grid."""

    def __init__(self, spatial: tuple[int, ...], params: NAParams, tile: int) -> None:
        self.length = _padded(spatial, 1)
        self.kernel = _padded(params.kernel_size, 1)
        self.stride = _padded(params.stride, 1)
        self.dilation = _padded(params.dilation, 1)
        self.causal = (False,) * (3 - len(spatial)) + tuple(params.is_causal)
        group = tuple(-(-n // d) for n, d in zip(self.length, self.dilation, strict=True))
        self.tile = _tile(group, tile)
        self.tiles = tuple(
            d * -(-g // t) for d, g, t in zip(self.dilation, group, self.tile, strict=True)
        )

    def args(self) -> tuple[int, ...]:
        return (*self.length, *self.stride, *self.dilation, self.tiles[1], self.tiles[2])

    def constexprs(self) -> dict:
        k, c, t = self.kernel, self.causal, self.tile
        return dict(K0=k[0], K1=k[1], K2=k[2], C0=c[0], C1=c[1], C2=c[2], T0=t[0], T1=t[1], T2=t[2])

    def grid(self, rows: int) -> tuple[int, int]:
        return (math.prod(self.tiles), rows)


def _tile(group: tuple[int, int, int], size: int) -> tuple[int, int, int]:
    """A box of ``size`` positions (powers of two), as cubic as the group lengths allow.

    Doubling the shortest side that still fits keeps the key halo small: a 2-D 8 x 8 box of
    queries with kernel 13 reads 20 x 20 keys, a 1 x 64 row 13 x 76.
    """
    tile = [1, 1, 1]
    while math.prod(tile) < size:
        growable = [a for a in range(3) if tile[a] < group[a]]
        axis = min(growable or [2], key=lambda a: (tile[a], -a))
        tile[axis] *= 2
    return tuple(tile)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``[B, *spatial, heads, D]`` as ``[B, N, heads, D]`` with unit stride on ``D``."""
    t = t.reshape(t.shape[0], math.prod(t.shape[1:-2]), *t.shape[-2:])
    return t if t.stride(-1) == 1 else t.contiguous()


def _block(dim: int) -> int:
    """A tile's width for ``dim`` features: a power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, 1 << (dim - 1).bit_length())


def _precision(dtype: torch.dtype) -> str:
    """float32 products in full precision unless PyTorch allows TF32 for matmuls; half-precision
    products take Triton's default (the setting applies to float32 operands only)."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _common(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    params: NAParams,
    geometry: _Geometry,
) -> tuple[tuple, tuple, dict]:
    """The arguments every kernel shares: tensors, runtime integers, compile-time constants."""
    q, k, v = _rows(query), _rows(key), _rows(value)
    heads, heads_kv = query.shape[-2], key.shape[-2]
    return (
        (q, k, v, rpb if rpb is None else rpb.contiguous()),
        (
            q.stride(0),
            q.stride(1),
            q.stride(2),
            k.stride(0),
            k.stride(1),
            k.stride(2),
            v.stride(0),
            v.stride(1),
            v.stride(2),
            *geometry.args(),
            heads,
            heads // heads_kv,
            query.shape[-1],
            value.shape[-1],
            params.scale,
        ),
        dict(
            **geometry.constexprs(),
            BLOCK_D=_block(query.shape[-1]),
            BLOCK_DV=_block(value.shape[-1]),
            HAS_RPB=rpb is not None,
            PRECISION=_precision(query.dtype),
        ),
    )


def na_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    params: NAParams,
    need_lse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output ``[B, *spatial, heads, Dv]`` and log-sum-exp ``[B, heads, N]`` (float32)."""
    geometry = _Geometry(tuple(query.shape[1:-2]), params, _QUERY_TILE)
    (q, k, v, rpb_c), args, constexprs = _common(query, key, value, rpb, params, geometry)
    batch, n, heads, _ = q.shape
    out = torch.empty((batch, n, heads, value.shape[-1]), dtype=value.dtype, device=q.device)
    lse = torch.empty((batch, heads, n), dtype=torch.float32, device=q.device)
    load().na_forward_kernel[geometry.grid(batch * heads)](
        q, k, v, rpb_c, out, lse, *args, BLOCK_N=64, **constexprs
    )
    return out.reshape(*query.shape[:-1], value.shape[-1]), lse


def na_backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    params: NAParams,
    grad_lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients for query, key, value and rpb (``None`` without rpb)."""
    spatial = tuple(query.shape[1:-2])
    batch, heads, heads_kv = query.shape[0], query.shape[-2], key.shape[-2]
    n = math.prod(spatial)
    do = _rows(grad_out).contiguous()
    delta = (do.float() * _rows(out).float()).sum(-1).transpose(1, 2)
    if grad_lse is not None:
        delta = delta - grad_lse.float()
    delta = delta.contiguous()
    lse = lse.float().contiguous()
    dev = query.device
    dq = torch.empty((batch, heads, n, query.shape[-1]), dtype=torch.float32, device=dev)
    dk = torch.empty((batch, heads_kv, n, key.shape[-1]), dtype=torch.float32, device=dev)
    dv = torch.empty((batch, heads_kv, n, value.shape[-1]), dtype=torch.float32, device=dev)
    drpb = None if rpb is None else torch.zeros(rpb.shape, dtype=torch.float32, device=dev)

    geometry = _Geometry(spatial, params, _QUERY_TILE)
    (q, k, v, rpb_c), args, constexprs = _common(query, key, value, rpb, params, geometry)
    kernels = load()
    kernels.na_backward_dq_kernel[geometry.grid(batch * heads)](
        q, k, v, rpb_c, do, lse, delta, dq, drpb, *args, BLOCK_N=64, **constexprs
    )
    # Key boxes tile the input like query boxes; each visits the queries within reach.
    radius = [
        inverse_window_radius(kk, s) for kk, s in zip(geometry.kernel, geometry.stride, strict=True)
    ]
    kernels.na_backward_dkdv_kernel[geometry.grid(batch * heads_kv)](
        q, k, v, rpb_c, do, lse, delta, dk, dv, *args, *radius, BLOCK_M=64, **constexprs
    )
    return (
        heads_last(dq, query),
        heads_last(dk, key),
        heads_last(dv, value),
        None if drpb is None else drpb.to(rpb.dtype),
    )
