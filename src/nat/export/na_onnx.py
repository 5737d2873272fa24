"""``nat::na_forward`` in standard ONNX operators, for PyTorch's ONNX exporter.

The neighbour table of :mod:`nat.ops.spec` (which key each query attends to, whether it is a
real neighbour, its RPB index) depends only on the spatial size and the window arguments, so for
an exported spatial size it is a constant. Every window rule (dilation, stride, causal masking,
even kernels, RPB) lives in that table, so a lowering built from it is exact wherever the table is.

Gathering each query's own keys would copy every key ``prod(kernel_size)`` times. Instead the
queries are cut into tiles (half a window's extent per axis, within one dilation group) and each
tile attends densely to the union of its queries' neighbours, a halo a few times the tile's size,
with ``-inf`` on the pairs that are not neighbours: ``Gather``, two batched ``MatMul`` and a
``Softmax`` per call. Inputs that every window covers (:func:`nat.ops.spec.covers_input`) take
plain dense attention. The batch size may stay symbolic; the spatial size may not.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from onnxscript import ir
from onnxscript import opset18 as op

from ..ops import spec

__all__ = ["Tiles", "na_forward_onnx", "tile_table", "translation_table"]


@dataclass(frozen=True)
class Tiles:
    """Query tiles and their key halos, as index tables (int64).

    ``queries[t, i]``: the ``i``-th query of tile ``t`` (short tiles repeat their first query);
    ``keys[t, j]``: the ``j``-th key of its halo (short halos repeat their first key);
    ``bias[t, i, j]``: the RPB index (into ``rpb.reshape(heads, -1)``) of key ``j`` for query
    ``i``, or ``rpb_size`` where ``j`` is not one of the query's neighbours;
    ``position[n]``: where query ``n`` sits in ``queries.reshape(-1)``.
    """

    queries: np.ndarray
    keys: np.ndarray
    bias: np.ndarray
    position: np.ndarray
    rpb_size: int


def _axis_tiles(length: int, kernel: int, dilation: int) -> list[list[int]]:
    """One axis cut into runs of ``ceil(kernel / 2)`` queries of one dilation group each.

    Longer runs copy fewer keys, shorter ones score fewer non-neighbours: half a window was the
    fastest in onnxruntime on NAT-Mini (87 ms against 97 ms for a whole window, batch 1, CPU).
    """
    run = (kernel + 1) // 2
    tiles = []
    for residue in range(dilation):
        group = list(range(residue, length, dilation))
        tiles += [group[i : i + run] for i in range(0, len(group), run)]
    return tiles


def tile_table(spatial: tuple[int, ...], params: spec.NAParams) -> Tiles:
    """The :class:`Tiles` of an input of size ``spatial`` for validated window ``params``."""
    nbr, valid, bias_idx = spec.neighbor_table(spatial, params, torch.device("cpu"))
    nbr, bias_idx = nbr.long().numpy(), bias_idx.long().numpy()
    valid = np.ones(nbr.shape, dtype=bool) if valid is None else valid.numpy()
    rpb_size = math.prod(2 * k - 1 for k in params.kernel_size)
    strides = [math.prod(spatial[a + 1 :]) for a in range(len(spatial))]
    per_axis = [
        _axis_tiles(length, k, d)
        for length, k, d in zip(spatial, params.kernel_size, params.dilation, strict=True)
    ]
    tile_queries, tile_keys = [], []
    for runs in itertools.product(*per_axis):
        queries = [
            sum(i * s for i, s in zip(index, strides, strict=True))
            for index in itertools.product(*runs)
        ]
        tile_queries.append(queries)
        tile_keys.append(np.unique(nbr[queries][valid[queries]]))
    width_q = max(len(q) for q in tile_queries)
    width_k = max(len(k) for k in tile_keys)
    queries = np.array([q + [q[0]] * (width_q - len(q)) for q in tile_queries], dtype=np.int64)
    keys = np.stack([np.pad(k, (0, width_k - len(k)), mode="edge") for k in tile_keys])
    bias = np.full((len(tile_queries), width_q, width_k), rpb_size, dtype=np.int64)
    for t, halo in enumerate(tile_keys):
        rows = queries[t]
        cols = np.searchsorted(halo, nbr[rows])  # [T, P]; halo holds every valid neighbour
        r, p = np.nonzero(valid[rows])
        bias[t, r, cols[r, p]] = bias_idx[rows][r, p]
    # Every query is in exactly one tile (padding repeats it): take its first place.
    _, position = np.unique(queries.reshape(-1), return_index=True)
    return Tiles(queries, keys.astype(np.int64), bias, position.astype(np.int64), rpb_size)


def _static_dims(value, name: str) -> tuple[int, ...]:
    dims = tuple(value.shape)
    if not all(isinstance(d, int) for d in dims[1:]):
        raise ValueError(
            f"{name} has shape {list(dims)}; ONNX export of neighborhood attention needs every "
            f"axis but the batch to be static (the neighbour table is built for one spatial size)"
        )
    return dims


def _const(array: np.ndarray):
    return op.Constant(value=ir.tensor(array))


def _ints(values: list[int]):
    return op.Constant(value_ints=list(values))


def na_forward_onnx(
    query,
    key,
    value,
    rpb,
    kernel_size: list[int],
    stride: list[int],
    dilation: list[int],
    is_causal: list[bool],
    scale: float,
    backend: str,
    need_lse: bool,
):
    """Trace-only translation of ``torch.ops.nat.na_forward``: ``(out, lse)`` as ONNX values.

    ``query``/``key`` ``[B, *spatial, heads, D]``, ``value`` ``[B, *spatial, heads, Dv]``,
    ``rpb`` ``[heads, *(2K - 1)]`` or ``None``. ``out`` is ``[B, *spatial, heads, Dv]``; ``lse``
    is ``[B, heads, N]`` when ``need_lse``, else empty, as the operator returns it. ``backend``
    only chooses a PyTorch kernel and has no meaning here.
    """
    q_dims = _static_dims(query, "query")
    dim_v = _static_dims(value, "value")[-1]
    spatial, heads, dim = q_dims[1:-2], q_dims[-2], q_dims[-1]
    # Re-check the window against the exported size: a table is only defined for valid windows.
    params = spec.check_window_args(spatial, kernel_size, stride, dilation, is_causal)
    n = math.prod(spatial)

    def heads_first(t, d: int):
        # [B, *spatial, heads, d] -> [B, heads, N, d]; Reshape's 0 keeps the (symbolic) batch.
        return op.Transpose(op.Reshape(t, _ints([0, n, heads, d])), perm=[0, 2, 1, 3])

    q, k, v = heads_first(query, dim), heads_first(key, dim), heads_first(value, dim_v)
    if spec.covers_input(spatial, params):
        # Every window is the whole input, in order: one tile, no gathers, no mask.
        _, _, bias_idx = spec.neighbor_table(spatial, params, torch.device("cpu"))
        s = op.MatMul(q, op.Transpose(k, perm=[0, 1, 3, 2]))  # [B, heads, N, N]
        s = op.Mul(s, op.CastLike(op.Constant(value_float=float(scale)), s))
        if rpb is not None:
            table = op.Reshape(rpb, _ints([heads, -1]))
            s = op.Add(s, op.Gather(table, _const(bias_idx.long().numpy()), axis=1))
        out = op.MatMul(op.Softmax(s, axis=-1), v)
        lse = op.ReduceLogSumExp(s, _ints([-1]), keepdims=0) if need_lse else None
    else:
        tiles = tile_table(spatial, params)
        q_t = op.Gather(q, _const(tiles.queries), axis=2)  # [B, heads, tiles, T, D]
        k_t = op.Gather(k, _const(tiles.keys), axis=2)  # [B, heads, tiles, M, D]
        v_t = op.Gather(v, _const(tiles.keys), axis=2)  # [B, heads, tiles, M, Dv]
        s = op.MatMul(q_t, op.Transpose(k_t, perm=[0, 1, 2, 4, 3]))  # [B, heads, tiles, T, M]
        s = op.Mul(s, op.CastLike(op.Constant(value_float=float(scale)), s))
        # Non-neighbours index one extra column of -inf appended to the RPB table (a single
        # row of zeros without RPB): mask and bias in one Gather.
        if rpb is None:
            rows, table = 1, op.CastLike(_const(np.zeros((1, tiles.rpb_size), np.float32)), s)
        else:
            rows, table = heads, op.Reshape(rpb, _ints([heads, -1]))
        minus_inf = op.CastLike(_const(np.full((rows, 1), -np.inf, np.float32)), s)
        table = op.Concat(table, minus_inf, axis=1)  # [heads or 1, R + 1]
        s = op.Add(s, op.Gather(table, _const(tiles.bias), axis=1))
        tiled = [0, heads, tiles.queries.size]
        out = op.Reshape(op.MatMul(op.Softmax(s, axis=-1), v_t), _ints([*tiled, dim_v]))
        position = _const(tiles.position)
        out = op.Gather(out, position, axis=2)  # [B, heads, N, Dv]
        lse = None
        if need_lse:
            lse = op.ReduceLogSumExp(s, _ints([-1]), keepdims=0)
            lse = op.Gather(op.Reshape(lse, _ints(tiled)), position, axis=2)
    out = op.Reshape(op.Transpose(out, perm=[0, 2, 1, 3]), _ints([0, *spatial, heads, dim_v]))
    if lse is None:
        lse = _const(np.zeros((0,), dtype=np.float32))
    return out, lse


def translation_table() -> dict[Callable, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export``: the NA op in standard ONNX."""
    return {torch.ops.nat.na_forward.default: na_forward_onnx}
