"""Composite neighborhood attention in plain PyTorch: runs on any device.

Queries are processed in chunks; each chunk gathers its neighbours' keys and values through the
cached neighbour table of :mod:`nat.ops.spec`, so memory grows with ``N * prod(kernel_size)``
(bounded per chunk), never with ``N ** 2``. The backward recomputes scores from the saved
log-sum-exp, flash-attention style, instead of keeping the gathered tensors alive.

Grouped-query attention (key/value with ``heads_kv`` heads, query with ``G * heads_kv``) folds the
query's ``G`` heads of a group into its query axis, ``[B, heads_kv, G * N, D]``, with the
neighbour table repeated ``G`` times: every key/value head is gathered once per group, never
repeated.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .spec import NAParams, neighbor_table

__all__ = ["dense_backward", "dense_forward", "na_backward", "na_forward", "na_unfused"]

_CHUNK_BYTES = 32 * 2**20


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax and gradient accumulation run in float32 (float64 for float64 inputs)."""
    return torch.promote_types(dtype, torch.float32)


def _flatten(t: torch.Tensor) -> torch.Tensor:
    """``[B, *spatial, heads, D]`` -> ``[B, heads, N, D]``."""
    return t.flatten(1, -3).transpose(1, 2)


def heads_last(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A head-major gradient ``[B, heads, N, D]`` as ``like``'s ``[B, *spatial, heads, D]``.

    A strided view (cast to ``like``'s dtype), not a copy: every backend returns its gradients in
    this layout, which is what the operator's fake (shape) function declares.
    """
    batch, heads, _, dim = grad.shape
    return grad.view(batch, heads, *like.shape[1:-2], dim).movedim(1, -2).to(like.dtype)


class _Folded(NamedTuple):
    """Query, tables and bias of a call with the query's head groups folded into its rows."""

    q: torch.Tensor
    """``[B, heads_kv, G * N, D]``."""
    nbr: torch.Tensor
    valid: torch.Tensor | None
    bias_idx: torch.Tensor
    """``[G * N, P]`` each; ``bias_idx`` indexes ``rpb_flat``'s rows."""
    rpb_flat: torch.Tensor | None
    """``[heads_kv, G * R]``: query head ``g`` of a group reads columns ``[g * R, (g + 1) * R)``."""


def _fold(
    query: torch.Tensor, key: torch.Tensor, rpb: torch.Tensor | None, params: NAParams
) -> _Folded:
    """Fold ``query`` ``[B, *spatial, heads, D]`` for ``key`` ``[B, *spatial, heads_kv, D]``."""
    nbr, valid, bias_idx = neighbor_table(tuple(query.shape[1:-2]), params, query.device)
    q = _flatten(query)
    batch, heads, n, dim = q.shape
    heads_kv = key.shape[-2]
    groups = heads // heads_kv if heads_kv else 1
    rpb_flat = None if rpb is None else rpb.reshape(heads_kv, -1)
    if groups == 1:
        return _Folded(q, nbr, valid, bias_idx, rpb_flat)
    bias_len = math.prod(2 * k - 1 for k in params.kernel_size)
    offsets = torch.arange(groups, device=bias_idx.device, dtype=bias_idx.dtype) * bias_len
    return _Folded(
        q.reshape(batch, heads_kv, groups * n, dim),
        nbr.repeat(groups, 1),
        None if valid is None else valid.repeat(groups, 1),
        (bias_idx.unsqueeze(0) + offsets.view(groups, 1, 1)).flatten(0, 1),
        rpb_flat,
    )


def _unfold(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, heads_kv, G * N, ...]`` back to ``[B, heads, N, ...]`` (any trailing axes)."""
    heads_kv = t.shape[1]
    if heads_kv == heads:
        return t
    return t.reshape(t.shape[0], heads, t.shape[2] // (heads // heads_kv), *t.shape[3:])


def _chunks(n: int, per_query_bytes: int):
    step = max(1, _CHUNK_BYTES // max(1, per_query_bytes))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _scores(
    q: torch.Tensor,
    k_nb: torch.Tensor,
    rpb_flat: torch.Tensor | None,
    bias_idx: torch.Tensor,
    valid: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Scores ``[B, heads, n, P]`` of query chunk ``q`` ``[B, heads, n, D]``, accumulation dtype.

    The products run in the accumulation dtype: a float16 ``q . k`` overflows at 65504 long
    before the softmax would.
    """
    acc = accumulation_dtype(q.dtype)
    s = (q.to(acc).unsqueeze(-2) @ k_nb.to(acc).transpose(-1, -2)).squeeze(-2) * scale
    if rpb_flat is not None:
        s = s + rpb_flat[:, bias_idx].to(acc)
    if valid is not None:
        s = s.masked_fill(~valid, float("-inf"))
    return s


def _dense_scores(q, k, rpb_flat, bias_idx, scale):
    """Scores ``[B, heads, N, N]`` of a dense window, computed like :func:`_scores`."""
    acc = accumulation_dtype(q.dtype)
    s = q.to(acc) @ k.to(acc).transpose(-1, -2)
    if rpb_flat is None:
        return s.mul_(scale)
    return torch.add(rpb_flat[:, bias_idx].to(s.dtype), s, alpha=scale)


def dense_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    params: NAParams,
    need_lse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`na_forward` for inputs every window covers (:func:`covers_input`): batched GEMMs."""
    f = _fold(query, key, rpb, params)
    q, k, v = f.q, _flatten(key), _flatten(value)
    heads, dim = query.shape[-2], q.shape[-1]
    if query.device.type == "cpu" and query.dtype != torch.float64 and dim == value.shape[-1]:
        # PyTorch's fused CPU flash attention takes the RPB as an additive mask and returns the
        # log-sum-exp: one pass, no score matrix in memory. It needs value's head_dim to be
        # query's; other head dims take the GEMMs below.
        mask = None if f.rpb_flat is None else f.rpb_flat[:, f.bias_idx].to(query.dtype)[None]
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=mask, scale=params.scale
        )
    else:
        s = _dense_scores(q, k, f.rpb_flat, f.bias_idx, params.scale)
        p = torch.softmax(s, dim=-1)
        # max p = 1 / sum(exp(s - max s)) >= 1 / N: log-sum-exp without a second exp pass.
        lse = s.amax(-1).sub_(p.amax(-1).log_()) if need_lse else s.new_empty(0)
        out = p.to(value.dtype) @ v
    out = _unfold(out, heads).transpose(1, 2).reshape(*query.shape[:-1], value.shape[-1])
    # The fused attention's log-sum-exp is a transposed view; the op's fake declares it dense.
    return out.contiguous(), _unfold(lse, heads).contiguous() if lse.numel() else lse


def dense_backward(
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
    """:func:`na_backward` for inputs every window covers, recomputing the probabilities."""
    f = _fold(query, key, rpb, params)
    q, k, v = f.q, _flatten(key), _flatten(value)
    heads_kv = k.shape[1]
    do, o = _fold_rows(_flatten(grad_out), heads_kv), _fold_rows(_flatten(out), heads_kv)
    acc = accumulation_dtype(query.dtype)
    lse = _fold_rows(lse, heads_kv)
    p = _dense_scores(q, k, f.rpb_flat, f.bias_idx, params.scale).sub_(lse.unsqueeze(-1)).exp_()
    delta = _delta(do, o, grad_lse, heads_kv).unsqueeze(-1)
    ds = (do.to(acc) @ v.to(acc).transpose(-1, -2)).sub_(delta).mul_(p)
    dv = p.transpose(-1, -2) @ do.to(acc)
    dq = (ds @ k.to(acc)).mul_(params.scale)
    dk = (ds.transpose(-1, -2) @ q.to(acc)).mul_(params.scale)
    drpb = None
    if rpb is not None:
        drpb = torch.zeros(f.rpb_flat.shape, dtype=acc, device=rpb.device)
        drpb.index_add_(1, f.bias_idx.reshape(-1), ds.sum(0).reshape(heads_kv, -1))
        drpb = drpb.reshape(rpb.shape).to(rpb.dtype)
    dq = _unfold(dq, query.shape[-2])
    return heads_last(dq, query), heads_last(dk, key), heads_last(dv, value), drpb


def _fold_rows(t: torch.Tensor, heads_kv: int) -> torch.Tensor:
    """``[B, heads, N, ...]`` as ``[B, heads_kv, G * N, ...]`` (the rows :func:`_fold` makes)."""
    heads = t.shape[1]
    if heads == heads_kv:
        return t
    return t.reshape(t.shape[0], heads_kv, heads // heads_kv * t.shape[2], *t.shape[3:])


def _delta(
    do: torch.Tensor, o: torch.Tensor, grad_lse: torch.Tensor | None, heads_kv: int
) -> torch.Tensor:
    """``rowsum(dO * O) - dLSE``, ``[B, heads_kv, G * N]``: a gradient reaching the log-sum-exp
    adds ``dLSE * P`` to ``dS = P * (dP - delta)``."""
    acc = accumulation_dtype(do.dtype)
    delta = (do.to(acc) * o.to(acc)).sum(-1)
    if grad_lse is not None:
        delta = delta - _fold_rows(grad_lse, heads_kv).to(acc)
    return delta


def na_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    params: NAParams,
    need_lse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output ``[B, *spatial, heads, Dv]`` and log-sum-exp ``[B, heads, N]`` (float32+).

    Key and value may have ``heads_kv`` heads, a divisor of the query's (grouped-query attention).
    """
    f = _fold(query, key, rpb, params)
    q, k, v = f.q, _flatten(key), _flatten(value)
    batch, heads_kv, rows, dim = q.shape
    dim_v = v.shape[-1]
    out = torch.empty((batch, heads_kv, rows, dim_v), dtype=value.dtype, device=value.device)
    lse = torch.empty(
        (batch, heads_kv, rows), dtype=accumulation_dtype(query.dtype), device=query.device
    )
    per_query = batch * heads_kv * params.window * (dim + dim_v + 2) * 4
    for c in _chunks(rows, per_query):
        idx = f.nbr[c]
        s = _scores(
            q[:, :, c],
            k[:, :, idx],
            f.rpb_flat,
            f.bias_idx[c],
            None if f.valid is None else f.valid[c],
            params.scale,
        )
        chunk_lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - chunk_lse.unsqueeze(-1))
        out[:, :, c] = (p.to(value.dtype).unsqueeze(-2) @ v[:, :, idx]).squeeze(-2)
        lse[:, :, c] = chunk_lse
    heads = query.shape[-2]
    out = _unfold(out, heads).transpose(1, 2).reshape(*query.shape[:-1], dim_v)
    return out.contiguous(), _unfold(lse, heads)


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
    """Gradients for query, key, value and rpb (``None`` without rpb).

    ``grad_lse`` ``[B, heads, N]`` is the gradient reaching the log-sum-exp, if any.
    """
    f = _fold(query, key, rpb, params)
    q, k, v = f.q, _flatten(key), _flatten(value)
    batch, heads_kv, rows, dim = q.shape
    n, dim_v = k.shape[2], v.shape[-1]
    do, o = _fold_rows(_flatten(grad_out), heads_kv), _fold_rows(_flatten(out), heads_kv)
    lse = _fold_rows(lse, heads_kv)
    acc = accumulation_dtype(query.dtype)
    delta = _delta(do, o, grad_lse, heads_kv)  # [B, heads_kv, G * N]
    dq = torch.empty((batch, heads_kv, rows, dim), dtype=acc, device=query.device)
    dk = torch.zeros((batch, heads_kv, n, dim), dtype=acc, device=query.device)
    dv = torch.zeros((batch, heads_kv, n, dim_v), dtype=acc, device=query.device)
    drpb = None if rpb is None else torch.zeros(f.rpb_flat.shape, dtype=acc, device=rpb.device)
    per_query = batch * heads_kv * params.window * (3 * dim + 3 * dim_v + 4) * 4
    for c in _chunks(rows, per_query):
        idx = f.nbr[c]
        k_nb, v_nb = k[:, :, idx], v[:, :, idx]
        qc, doc = q[:, :, c], do[:, :, c]
        s = _scores(
            qc,
            k_nb,
            f.rpb_flat,
            f.bias_idx[c],
            None if f.valid is None else f.valid[c],
            params.scale,
        )
        p = torch.exp(s - lse[:, :, c].unsqueeze(-1))  # [B, heads_kv, n, P]
        dp = (doc.to(acc).unsqueeze(-2) @ v_nb.to(acc).transpose(-1, -2)).squeeze(-2)
        ds = p * (dp - delta[:, :, c].unsqueeze(-1))
        dq[:, :, c] = (ds.unsqueeze(-2) @ k_nb.to(acc)).squeeze(-2) * params.scale
        flat_idx = idx.reshape(-1)
        width = idx.numel()
        dk.index_add_(
            2,
            flat_idx,
            (ds.unsqueeze(-1) * (qc.to(acc) * params.scale).unsqueeze(-2)).reshape(
                batch, heads_kv, width, dim
            ),
        )
        dv.index_add_(
            2,
            flat_idx,
            (p.unsqueeze(-1) * doc.to(acc).unsqueeze(-2)).reshape(batch, heads_kv, width, dim_v),
        )
        if drpb is not None:
            drpb.index_add_(1, f.bias_idx[c].reshape(-1), ds.sum(0).reshape(heads_kv, width))

    return (
        heads_last(_unfold(dq, query.shape[-2]), query),
        heads_last(dk, key),
        heads_last(dv, value),
        None if drpb is None else drpb.reshape(rpb.shape).to(rpb.dtype),
    )


def na_unfused(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    params: NAParams,
    attn_drop: float = 0.0,
) -> torch.Tensor:
    """Unfused NA with explicit attention weights, for attention dropout during training.

    Differentiates through plain autograd; ``[B, *spatial, heads, D]`` in and out.
    """
    f = _fold(query, key, rpb, params)
    k, v = _flatten(key), _flatten(value)
    s = _scores(f.q, k[:, :, f.nbr], f.rpb_flat, f.bias_idx, f.valid, params.scale)
    p = torch.nn.functional.dropout(s.softmax(dim=-1), p=attn_drop, training=attn_drop > 0)
    out = (p.to(value.dtype).unsqueeze(-2) @ v[:, :, f.nbr]).squeeze(-2)
    out = _unfold(out, query.shape[-2]).transpose(1, 2)
    return out.reshape(*query.shape[:-1], value.shape[-1])
