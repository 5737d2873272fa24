"""Composite neighborhood attention in plain PyTorch: runs on any device.

Queries are processed in chunks; each chunk gathers its neighbours' keys and values through the
cached neighbour table of :mod:`nat.ops.spec`, so memory grows with ``N * prod(kernel_size)``
(bounded per chunk), never with ``N ** 2``. The backward recomputes scores from the saved
log-sum-exp, flash-attention style, instead of keeping the gathered tensors alive.
"""

from __future__ import annotations

import torch

from .spec import NAParams, covers_input, neighbor_table

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
    _, _, bias_idx = neighbor_table(tuple(query.shape[1:-2]), params, query.device)
    q, k, v = _flatten(query), _flatten(key), _flatten(value)
    dim = q.shape[-1]
    rpb_flat = None if rpb is None else rpb.reshape(q.shape[1], -1)
    if query.device.type == "cpu" and query.dtype != torch.float64 and dim == value.shape[-1]:
        # PyTorch's fused CPU flash attention takes the RPB as an additive mask and returns the
        # log-sum-exp: one pass, no score matrix in memory. It needs value's head_dim to be
        # query's; other head dims take the GEMMs below.
        mask = None if rpb_flat is None else rpb_flat[:, bias_idx].to(query.dtype).unsqueeze(0)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=mask, scale=params.scale
        )
    else:
        s = _dense_scores(q, k, rpb_flat, bias_idx, params.scale)
        p = torch.softmax(s, dim=-1)
        # max p = 1 / sum(exp(s - max s)) >= 1 / N: log-sum-exp without a second exp pass.
        lse = s.amax(-1).sub_(p.amax(-1).log_()) if need_lse else s.new_empty(0)
        out = p.to(value.dtype) @ v
    return out.transpose(1, 2).reshape(value.shape).contiguous(), lse


def dense_backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    params: NAParams,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`na_backward` for inputs every window covers, recomputing the probabilities."""
    _, _, bias_idx = neighbor_table(tuple(query.shape[1:-2]), params, query.device)
    q, k, v = _flatten(query), _flatten(key), _flatten(value)
    do, o = _flatten(grad_out), _flatten(out)
    acc = accumulation_dtype(query.dtype)
    rpb_flat = None if rpb is None else rpb.reshape(q.shape[1], -1)
    p = _dense_scores(q, k, rpb_flat, bias_idx, params.scale).sub_(lse.unsqueeze(-1)).exp_()
    delta = (do.to(acc) * o.to(acc)).sum(-1, keepdim=True)
    ds = (do.to(acc) @ v.to(acc).transpose(-1, -2)).sub_(delta).mul_(p)
    dv = p.transpose(-1, -2) @ do.to(acc)
    dq = (ds @ k.to(acc)).mul_(params.scale)
    dk = (ds.transpose(-1, -2) @ q.to(acc)).mul_(params.scale)
    drpb = None
    if rpb is not None:
        drpb = torch.zeros(rpb_flat.shape, dtype=acc, device=rpb.device)
        drpb.index_add_(1, bias_idx.reshape(-1), ds.sum(0).reshape(q.shape[1], -1))
        drpb = drpb.reshape(rpb.shape).to(rpb.dtype)

    return heads_last(dq, query), heads_last(dk, key), heads_last(dv, value), drpb


def na_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    params: NAParams,
    need_lse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output ``[B, *spatial, heads, Dv]`` and log-sum-exp ``[B, heads, N]`` (float32+)."""
    spatial = tuple(query.shape[1:-2])
    if covers_input(spatial, params):
        return dense_forward(query, key, value, rpb, params, need_lse)
    nbr, valid, bias_idx = neighbor_table(spatial, params, query.device)
    q, k, v = _flatten(query), _flatten(key), _flatten(value)
    batch, heads, n, dim = q.shape
    dim_v = v.shape[-1]
    rpb_flat = None if rpb is None else rpb.reshape(heads, -1)
    out = torch.empty((batch, heads, n, dim_v), dtype=value.dtype, device=value.device)
    lse = torch.empty((batch, heads, n), dtype=accumulation_dtype(query.dtype), device=query.device)
    per_query = batch * heads * params.window * (dim + dim_v + 2) * 4
    for c in _chunks(n, per_query):
        idx = nbr[c]
        s = _scores(
            q[:, :, c],
            k[:, :, idx],
            rpb_flat,
            bias_idx[c],
            None if valid is None else valid[c],
            params.scale,
        )
        chunk_lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - chunk_lse.unsqueeze(-1))
        out[:, :, c] = (p.to(value.dtype).unsqueeze(-2) @ v[:, :, idx]).squeeze(-2)
        lse[:, :, c] = chunk_lse
    return out.transpose(1, 2).reshape(value.shape).contiguous(), lse


def na_backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    params: NAParams,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients for query, key, value and rpb (``None`` without rpb)."""
    spatial = tuple(query.shape[1:-2])
    if covers_input(spatial, params):
        return dense_backward(grad_out, query, key, value, rpb, out, lse, params)
    nbr, valid, bias_idx = neighbor_table(spatial, params, query.device)
    q, k, v = _flatten(query), _flatten(key), _flatten(value)
    do, o = _flatten(grad_out), _flatten(out)
    batch, heads, n, dim = q.shape
    dim_v = v.shape[-1]
    rpb_flat = None if rpb is None else rpb.reshape(heads, -1)
    acc = accumulation_dtype(query.dtype)
    delta = (do.to(acc) * o.to(acc)).sum(-1)  # [B, heads, N]
    dq = torch.empty((batch, heads, n, dim), dtype=acc, device=query.device)
    dk = torch.zeros((batch, heads, n, dim), dtype=acc, device=query.device)
    dv = torch.zeros((batch, heads, n, dim_v), dtype=acc, device=query.device)
    drpb = None if rpb is None else torch.zeros(rpb_flat.shape, dtype=acc, device=rpb.device)
    per_query = batch * heads * params.window * (3 * dim + 3 * dim_v + 4) * 4
    for c in _chunks(n, per_query):
        idx = nbr[c]
        k_nb, v_nb = k[:, :, idx], v[:, :, idx]
        qc, doc = q[:, :, c], do[:, :, c]
        s = _scores(
            qc, k_nb, rpb_flat, bias_idx[c], None if valid is None else valid[c], params.scale
        )
        p = torch.exp(s - lse[:, :, c].unsqueeze(-1))  # [B, heads, n, P]
        dp = (doc.to(acc).unsqueeze(-2) @ v_nb.to(acc).transpose(-1, -2)).squeeze(-2)
        ds = p * (dp - delta[:, :, c].unsqueeze(-1))
        dq[:, :, c] = (ds.unsqueeze(-2) @ k_nb.to(acc)).squeeze(-2) * params.scale
        flat_idx = idx.reshape(-1)
        width = idx.numel()
        dk.index_add_(
            2,
            flat_idx,
            (ds.unsqueeze(-1) * (qc.to(acc) * params.scale).unsqueeze(-2)).reshape(
                batch, heads, width, dim
            ),
        )
        dv.index_add_(
            2,
            flat_idx,
            (p.unsqueeze(-1) * doc.to(acc).unsqueeze(-2)).reshape(batch, heads, width, dim_v),
        )
        if drpb is not None:
            drpb.index_add_(1, bias_idx[c].reshape(-1), ds.sum(0).reshape(heads, width))

    return (
        heads_last(dq, query),
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
    spatial = tuple(query.shape[1:-2])
    nbr, valid, bias_idx = neighbor_table(spatial, params, query.device)
    q, k, v = _flatten(query), _flatten(key), _flatten(value)
    rpb_flat = None if rpb is None else rpb.reshape(q.shape[1], -1)
    s = _scores(q, k[:, :, nbr], rpb_flat, bias_idx, valid, params.scale)
    p = torch.nn.functional.dropout(s.softmax(dim=-1), p=attn_drop, training=attn_drop > 0)
    out = (p.to(value.dtype).unsqueeze(-2) @ v[:, :, nbr]).squeeze(-2)
    return out.transpose(1, 2).reshape(value.shape)
