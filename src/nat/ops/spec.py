"""Argument normalisation, validation and window geometry: the one source of truth.

Every backend receives arguments checked here and neighbour tables computed here, so the window
rule of ``docs/neighborhood-attention.md`` (dilation groups, inward-shifted borders, even kernels,
stride, causal masking, RPB indexing) is written exactly once. The one exception is on purpose:
:mod:`nat.ops.reference` derives the rule again from the document, so that the tests comparing
the backends with it also check this module.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "NAParams",
    "axis_rpb_start",
    "axis_window",
    "axis_window_start",
    "check_additional_kv",
    "check_dense_args",
    "check_merge_args",
    "check_na_args",
    "check_rpb_window",
    "check_window_args",
    "covers_input",
    "inverse_window_radius",
    "neighbor_table",
    "normalize_tuple",
]

_FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_AXIS_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}


@dataclass(frozen=True)
class NAParams:
    """Validated window arguments, one entry per spatial axis."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]
    scale: float

    @property
    def ndim(self) -> int:
        return len(self.kernel_size)

    @property
    def window(self) -> int:
        """Neighbours per query: ``prod(kernel_size)``."""
        return math.prod(self.kernel_size)


def normalize_tuple(name: str, value: object, ndim: int, kind: type = int) -> tuple:
    """``value`` as a tuple of ``ndim`` entries of ``kind`` (int or bool), or a precise error."""

    def check_one(v: object) -> object:
        if kind is bool:
            if isinstance(v, bool):
                return v
            raise TypeError(f"{name}={value!r} must be a bool or a tuple of {ndim} bools")
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(
                f"{name}={value!r} must be an integer or a tuple of {ndim} integers, "
                f"got an element of type {type(v).__name__}"
            )
        return int(v)

    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != ndim:
            raise ValueError(
                f"{name}={tuple(value)!r} has {len(value)} entries; expected {ndim} "
                f"(one per spatial axis) or a single value"
            )
        return tuple(check_one(v) for v in value)
    return (check_one(value),) * ndim


def check_additional_kv(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    additional_keys: torch.Tensor | None,
    additional_values: torch.Tensor | None,
) -> bool:
    """Check NATTEN's extra key/value tokens (after the main tensors); whether there are any.

    ``additional_keys`` ``[B, M, heads_kv, D]`` and ``additional_values`` ``[B, M, heads_kv, Dv]``
    hold ``M`` tokens that every query attends to besides its neighbourhood.
    """
    if additional_keys is None and additional_values is None:
        return False
    if additional_keys is None or additional_values is None:
        missing = "additional_keys" if additional_keys is None else "additional_values"
        raise ValueError(f"{missing} is None but the other is a tensor; pass both or neither")
    batch, heads_kv = key.shape[0], key.shape[-2]
    for name, t, like, main in (
        ("additional_keys", additional_keys, key, "key"),
        ("additional_values", additional_values, value, "value"),
    ):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        expected = f"[batch={batch}, tokens, heads_kv={heads_kv}, head_dim={like.shape[-1]}]"
        if t.dim() != 4 or (t.shape[0], t.shape[2], t.shape[3]) != (
            batch,
            heads_kv,
            like.shape[-1],
        ):
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}; expected {expected} like {main}'s "
                f"{tuple(like.shape)}"
            )
        if t.dtype != query.dtype or t.device != query.device:
            raise ValueError(
                f"{name} has dtype {t.dtype} on {t.device} but query has {query.dtype} on "
                f"{query.device}; they must match"
            )
    if additional_keys.shape[1] != additional_values.shape[1]:
        raise ValueError(
            f"additional_keys has {additional_keys.shape[1]} tokens but additional_values has "
            f"{additional_values.shape[1]}; they must match"
        )
    return True


def _check_tensors(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    ndim: int,
    dense: bool = False,
) -> None:
    """Check q/k/v ``[B, *spatial, heads, D]`` (key/value may have fewer heads). ``dense``: dense
    attention over ``[B, tokens, heads, D]``, where key/value may have another token count."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != ndim + 3:
            op, axes = (
                ("attention", "tokens")
                if dense
                else (f"{ndim}-D neighborhood attention", ", ".join(_AXIS_NAMES[ndim]))
            )
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} (rank {t.dim()}); {op} expects rank "
                f"{ndim + 3}: [batch, {axes}, heads, head_dim]"
            )
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"{name} has dtype {t.dtype}; expected one of float64, float32, float16, bfloat16"
            )
    for name, t in (("key", key), ("value", value)):
        if t.dtype != query.dtype:
            raise ValueError(
                f"{name} has dtype {t.dtype} but query has {query.dtype}; they must match"
            )
        if t.device != query.device:
            raise ValueError(
                f"{name} is on {t.device} but query is on {query.device}; they must match"
            )
    heads, heads_kv = query.shape[-2], key.shape[-2]
    tokens = key.shape[1:-2] if dense else query.shape[1:-2]
    if key.shape[:-2] != (query.shape[0], *tokens) or key.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"key has shape {tuple(key.shape)} but query has {tuple(query.shape)}; they must match "
            f"(except for heads: key may have fewer, see grouped-query attention)"
        )
    if heads_kv != heads and (heads_kv == 0 or heads % heads_kv):
        raise ValueError(
            f"key has {heads_kv} heads but query has {heads}; query's heads must be a multiple "
            f"of key/value's (grouped-query attention)"
        )
    if value.shape[:-1] != key.shape[:-1]:
        raise ValueError(
            f"value has shape {tuple(value.shape)}; all but its last axis (head_dim) must match "
            f"key's {tuple(key.shape)}"
        )
    if query.shape[-1] == 0 or value.shape[-1] == 0:
        raise ValueError(
            f"head_dim must be positive: query {tuple(query.shape)}, value {tuple(value.shape)}"
        )


def check_rpb_window(
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    is_causal: tuple[bool, ...],
    name: str = "rpb",
) -> None:
    """Raise unless relative positional bias is defined for this window (normalised tuples).

    RPB is defined for odd kernels without stride and without causal masking: the only
    combinations any checkpoint uses. ``name`` is how the caller asked for it (``"rpb"`` for the
    functional ops, ``"rel_pos_bias=True"`` for the modules).
    """
    if any(k % 2 == 0 for k in kernel_size):
        raise ValueError(
            f"{name} is only defined for odd kernel sizes; got kernel_size={kernel_size}"
        )
    if any(s != 1 for s in stride):
        raise ValueError(f"{name} is only defined for stride 1; got stride={stride}")
    if any(is_causal):
        raise ValueError(f"{name} is not defined with causal masking; got is_causal={is_causal}")


def _check_rpb(rpb: torch.Tensor, query: torch.Tensor, params: NAParams) -> None:
    if not isinstance(rpb, torch.Tensor):
        raise TypeError(f"rpb must be a torch.Tensor or None, got {type(rpb).__name__}")
    check_rpb_window(params.kernel_size, params.stride, params.is_causal)
    heads = query.shape[-2]
    expected = (heads, *(2 * k - 1 for k in params.kernel_size))
    if tuple(rpb.shape) != expected:
        raise ValueError(
            f"rpb has shape {tuple(rpb.shape)}; expected {expected} = "
            f"[heads, *(2 * kernel_size - 1)] for {heads} heads and "
            f"kernel_size={params.kernel_size}"
        )
    if rpb.dtype != query.dtype:
        raise ValueError(f"rpb has dtype {rpb.dtype} but query has {query.dtype}; they must match")
    if rpb.device != query.device:
        raise ValueError(f"rpb is on {rpb.device} but query is on {query.device}; they must match")


def check_na_args(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    ndim: int,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = 1,
    dilation: int | Sequence[int] | None = 1,
    is_causal: bool | Sequence[bool] | None = False,
    scale: float | None = None,
    rpb: torch.Tensor | None = None,
) -> NAParams:
    """Validate a call of ``na{ndim}d`` and return its normalised window arguments.

    ``scale=None`` means ``head_dim ** -0.5``; any other value, ``0.0`` included, is used as given
    (NATTEN 0.21 silently replaces a zero scale by the default).
    """
    _check_tensors(query, key, value, ndim)
    params = check_window_args(
        tuple(query.shape[1 : 1 + ndim]), kernel_size, stride, dilation, is_causal
    )
    params = dataclasses.replace(params, scale=_check_scale(scale, query.shape[-1]))
    if rpb is not None:
        _check_rpb(rpb, query, params)
    return params


def _check_scale(scale: float | None, head_dim: int) -> float:
    """``scale`` as a float: ``None`` means ``head_dim ** -0.5``, ``0.0`` means zero."""
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale={scale!r} must be a float or None")
    if not math.isfinite(scale):
        raise ValueError(f"scale={scale!r} must be finite")
    return float(scale)


def check_dense_args(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    is_causal: bool = False,
    scale: float | None = None,
) -> float:
    """Validate a call of dense ``attention`` (``[B, tokens, heads, D]``); return its scale."""
    _check_tensors(query, key, value, 1, dense=True)
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal={is_causal!r} must be a bool")
    if is_causal and key.shape[1] != query.shape[1]:
        raise ValueError(
            f"is_causal=True needs as many keys as queries; got {key.shape[1]} keys and "
            f"{query.shape[1]} queries"
        )
    return _check_scale(scale, query.shape[-1])


def check_merge_args(outputs: Sequence[torch.Tensor], lse_tensors: Sequence[torch.Tensor]) -> None:
    """Validate ``merge_attentions``: at least two outputs ``[B, *tokens, heads, Dv]`` of one
    shape, each with its log-sum-exp ``[B, *tokens, heads]``."""
    if not isinstance(outputs, Sequence) or not isinstance(lse_tensors, Sequence):
        raise TypeError("outputs and lse_tensors must be lists of tensors")
    if len(outputs) < 2 or len(outputs) != len(lse_tensors):
        raise ValueError(
            f"merge_attentions needs at least two outputs with one lse each; got "
            f"{len(outputs)} outputs and {len(lse_tensors)} lse tensors"
        )
    shape = outputs[0].shape
    for i, (out, lse) in enumerate(zip(outputs, lse_tensors, strict=True)):
        if out.shape != shape:
            raise ValueError(
                f"outputs[{i}] has shape {tuple(out.shape)} but outputs[0] has {tuple(shape)}; "
                f"they must match"
            )
        if lse.shape != shape[:-1]:
            raise ValueError(
                f"lse_tensors[{i}] has shape {tuple(lse.shape)}; expected {tuple(shape[:-1])} "
                f"(its output's shape without head_dim)"
            )
        if out.device != outputs[0].device or lse.device != outputs[0].device:
            raise ValueError(f"outputs[{i}] or lse_tensors[{i}] is on another device")


def check_window_args(
    spatial: tuple[int, ...],
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = 1,
    dilation: int | Sequence[int] | None = 1,
    is_causal: bool | Sequence[bool] | None = False,
) -> NAParams:
    """Validate window arguments against a spatial extent (scale left at 1.0).

    ``None`` for ``stride``, ``dilation`` or ``is_causal`` means the default (as in NATTEN).
    """
    ndim = len(spatial)
    stride = 1 if stride is None else stride
    dilation = 1 if dilation is None else dilation
    is_causal = False if is_causal is None else is_causal
    kernel = normalize_tuple("kernel_size", kernel_size, ndim)
    strides = normalize_tuple("stride", stride, ndim)
    dilations = normalize_tuple("dilation", dilation, ndim)
    causal = normalize_tuple("is_causal", is_causal, ndim, kind=bool)
    names = _AXIS_NAMES[ndim]
    for axis, (length, k, s, d) in enumerate(zip(spatial, kernel, strides, dilations, strict=True)):
        where = f" on axis {axis} ({names[axis]})" if ndim > 1 else ""
        if k < 2:
            raise ValueError(f"kernel_size={kernel_size!r}: every kernel size must be >= 2{where}")
        if d < 1:
            raise ValueError(f"dilation={dilation!r}: every dilation must be >= 1{where}")
        if s < 1 or s > k:
            raise ValueError(
                f"stride={stride!r}: every stride must satisfy 1 <= stride <= kernel_size "
                f"(kernel_size={k}){where}"
            )
        if k * d > length:
            raise ValueError(
                f"kernel_size * dilation = {k} * {d} = {k * d} is larger than the input "
                f"({names[axis]} {length}){where}; the functional ops do not pad "
                f"(the NeighborhoodAttention modules do)"
            )
    return NAParams(kernel, strides, dilations, causal, 1.0)


def axis_window(
    length: int, kernel: int, stride: int, dilation: int, causal: bool
) -> tuple[list[list[int]], list[list[bool]], list[list[int]]]:
    """Neighbours of every query on one axis, straight from the definition.

    Returns, for each query ``i`` in ``range(length)``, ``kernel`` key indices, whether each is a
    real neighbour (only causal windows near the start have fewer than ``kernel``), and the RPB
    index ``(j // dilation) - (i // dilation) + kernel - 1`` of each key.
    """
    left = kernel // 2
    right = kernel // 2 if kernel % 2 else kernel // 2 - 1
    keys, valid, bias = [], [], []
    for i in range(length):
        residue, qi = i % dilation, i // dilation
        group_len = -(-(length - residue) // dilation)
        if causal:
            leader = min((qi // stride) * stride + stride - 1, group_len - 1)
            first = leader - kernel + 1
            group_keys = [first + t for t in range(kernel)]
            ok = [0 <= kj <= qi for kj in group_keys]
            group_keys = [kj if good else qi for kj, good in zip(group_keys, ok, strict=True)]
        else:
            leader = min((qi // stride) * stride + stride // 2, group_len - 1)
            centre = min(max(leader, left), group_len - 1 - right)
            group_keys = [centre - left + t for t in range(kernel)]
            ok = [True] * kernel
        keys.append([kj * dilation + residue for kj in group_keys])
        valid.append(ok)
        bias.append([kj - qi + kernel - 1 for kj in group_keys])
    return keys, valid, bias


def _group_window(
    i: torch.Tensor, length: int, kernel: int, stride: int, dilation: int, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(qi, first)``: query ``i``'s index inside its dilation group and the group index of its
    window's first key (negative near the start of a causal axis)."""
    residue, qi = i % dilation, i // dilation
    group_len = (length - residue + dilation - 1) // dilation
    if causal:
        leader = torch.minimum((qi // stride) * stride + stride - 1, group_len - 1)
        return qi, leader - kernel + 1
    left = kernel // 2
    right = kernel // 2 if kernel % 2 else kernel // 2 - 1
    leader = torch.minimum((qi // stride) * stride + stride // 2, group_len - 1)
    centre = torch.minimum(leader.clamp(min=left), group_len - 1 - right)
    return qi, centre - left


def axis_window_start(
    i: torch.Tensor, length: int, kernel: int, stride: int, dilation: int, causal: bool
) -> torch.Tensor:
    """Closed form of :func:`axis_window`: the first key of each query ``i`` (an integer tensor).

    Query ``i``'s keys are ``start + t * dilation`` for ``t`` in ``range(kernel)``; key ``j`` is
    a real neighbour when ``0 <= j <= i`` on a causal axis (every key is, otherwise). Index
    arithmetic instead of an ``[N, K]`` table: what the GPU kernels compute per query.
    """
    _, first = _group_window(i, length, kernel, stride, dilation, causal)
    return first * dilation + i % dilation


def axis_rpb_start(
    i: torch.Tensor, length: int, kernel: int, stride: int, dilation: int, causal: bool
) -> torch.Tensor:
    """Closed form of :func:`axis_window`'s RPB indices: key ``t`` of query ``i`` reads RPB
    entry ``start + t`` on this axis, ``start`` in ``[0, kernel - 1]``."""
    qi, first = _group_window(i, length, kernel, stride, dilation, causal)
    return first - qi + kernel - 1


def inverse_window_radius(kernel: int, stride: int) -> int:
    """How far (in dilation-group steps) a query can be from a key it attends to on one axis.

    A window of ``kernel`` keys holds its stride group's leader, at most ``stride - 1`` steps
    from the query; the backward kernels visit, for a tile of keys, only the queries this close.
    """
    return kernel + stride - 2


def covers_input(spatial: tuple[int, ...], params: NAParams) -> bool:
    """Whether every query's window is the whole input: NA is then dense attention (plus RPB).

    True when each axis has ``length == kernel_size`` and ``dilation == 1`` (any stride, not
    causal): the inward-shifted window of every query is then ``[0, length)``, in order. Common
    at the deepest level of NAT/DiNAT (7 x 7 maps, kernel 7) and for inputs the modules pad.
    """
    return not any(params.is_causal) and all(
        length == k and d == 1
        for length, k, d in zip(spatial, params.kernel_size, params.dilation, strict=True)
    )


@functools.lru_cache(maxsize=256)
def _neighbor_table_cpu(
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    causal: tuple[bool, ...],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    ndim = len(spatial)
    keys, valid, bias = [], [], []
    for axis in range(ndim):
        k, v, b = axis_window(
            spatial[axis], kernel[axis], stride[axis], dilation[axis], causal[axis]
        )
        keys.append(torch.tensor(k, dtype=torch.long))
        valid.append(torch.tensor(v, dtype=torch.bool))
        bias.append(torch.tensor(b, dtype=torch.long))
    # Cartesian product over axes: query (i_0..i_n) x offset (t_0..t_n), axis 0 slowest.
    flat_key = torch.zeros((1, 1), dtype=torch.long)
    flat_valid = torch.ones((1, 1), dtype=torch.bool)
    flat_bias = torch.zeros((1, 1), dtype=torch.long)
    for axis in range(ndim):
        length, k = spatial[axis], kernel[axis]
        n, w = flat_key.shape

        def outer(acc: torch.Tensor, table: torch.Tensor, combine, n=n, w=w, length=length, k=k):
            return combine(acc.view(n, 1, w, 1), table.view(1, length, 1, k)).reshape(
                n * length, w * k
            )

        flat_key = outer(flat_key, keys[axis], lambda a, t, length=length: a * length + t)
        flat_valid = outer(flat_valid, valid[axis], torch.logical_and)
        flat_bias = outer(flat_bias, bias[axis], lambda a, t, k=k: a * (2 * k - 1) + t)
    mask = None if bool(flat_valid.all()) else flat_valid
    # int32 halves the tables; every backend (and torch indexing) accepts it.
    return flat_key.to(torch.int32).contiguous(), mask, flat_bias.to(torch.int32).contiguous()


_DEVICE_TABLES: dict = {}


def neighbor_table(
    spatial: tuple[int, ...], params: NAParams, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Flattened neighbour table of an input: ``(keys, valid, rpb_index)``, each ``[N, window]``.

    ``keys[n, p]`` is the flat spatial index of query ``n``'s ``p``-th neighbour (row-major over
    the spatial axes), ``valid`` is ``None`` when every entry is a real neighbour (always, unless
    causal), and ``rpb_index`` indexes the flattened ``rpb[h]`` table. Built once per geometry and
    device, then cached.
    """
    cache_key = (spatial, params.kernel_size, params.stride, params.dilation, params.is_causal)
    tables = _neighbor_table_cpu(*cache_key)
    if device.type == "cpu":
        return tables
    dev_key = (*cache_key, str(device))
    if dev_key not in _DEVICE_TABLES:
        if len(_DEVICE_TABLES) > 256:
            _DEVICE_TABLES.clear()
        _DEVICE_TABLES[dev_key] = tuple(None if t is None else t.to(device) for t in tables)
    return _DEVICE_TABLES[dev_key]
