"""``nat::na_forward`` in standard ONNX operators, for PyTorch's ONNX exporter.

The neighbour table of :mod:`nat.ops.spec` (which key each query attends to, whether it is a
real neighbour, its RPB index) depends only on the spatial size and the window arguments, so for
an exported spatial size it is a constant: keys and values are gathered through it, scored,
masked, soft-maxed and summed with plain ``Gather``/``MatMul``/``Softmax`` nodes. Every window
rule (dilation, stride, causal masking, even kernels, RPB) lives in the table, so the lowering is
exact wherever the table is; inputs that every window covers (:func:`nat.ops.spec.covers_input`)
take dense attention instead, with no gather. The batch size may stay symbolic; the spatial size
may not.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from onnxscript import ir
from onnxscript import opset18 as op

from ..ops import spec

__all__ = ["na_forward_onnx", "translation_table"]


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
    nbr, valid, bias_idx = spec.neighbor_table(spatial, params, torch.device("cpu"))
    n = int(nbr.shape[0])

    def heads_first(t, d: int):
        # [B, *spatial, heads, d] -> [B, heads, N, d]; Reshape's 0 keeps the (symbolic) batch.
        return op.Transpose(op.Reshape(t, _ints([0, n, heads, d])), perm=[0, 2, 1, 3])

    q, k, v = heads_first(query, dim), heads_first(key, dim), heads_first(value, dim_v)
    dense = spec.covers_input(spatial, params)
    if dense:
        # Every window is the whole input, in order: scores [B, heads, N, N].
        s = op.MatMul(q, op.Transpose(k, perm=[0, 1, 3, 2]))
    else:
        idx = _const(nbr.to(torch.int64).numpy())
        k_nb = op.Gather(k, idx, axis=2)  # [B, heads, N, P, D]
        q_row = op.Unsqueeze(q, _ints([3]))  # [B, heads, N, 1, D]
        s = op.Squeeze(op.MatMul(q_row, op.Transpose(k_nb, perm=[0, 1, 2, 4, 3])), _ints([3]))
    s = op.Mul(s, op.CastLike(op.Constant(value_float=float(scale)), s))
    if rpb is not None:
        table = op.Reshape(rpb, _ints([heads, -1]))
        s = op.Add(s, op.Gather(table, _const(bias_idx.to(torch.int64).numpy()), axis=1))
    if valid is not None:
        minus_inf = op.CastLike(op.Constant(value_float=float("-inf")), s)
        s = op.Where(_const(valid.numpy()), s, minus_inf)
    p = op.Softmax(s, axis=-1)
    if dense:
        out = op.MatMul(p, v)
    else:
        v_nb = op.Gather(v, idx, axis=2)  # [B, heads, N, P, Dv]
        out = op.Squeeze(op.MatMul(op.Unsqueeze(p, _ints([3])), v_nb), _ints([3]))
    out = op.Reshape(op.Transpose(out, perm=[0, 2, 1, 3]), _ints([0, *spatial, heads, dim_v]))
    if need_lse:
        lse = op.ReduceLogSumExp(s, _ints([-1]), keepdims=0)
    else:
        lse = _const(np.zeros((0,), dtype=np.float32))
    return out, lse


def translation_table() -> dict[Callable, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export``: the NA op in standard ONNX."""
    return {torch.ops.nat.na_forward.default: na_forward_onnx}
