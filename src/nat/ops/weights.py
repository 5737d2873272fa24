"""Attention weights of neighborhood attention: the softmax probabilities the operator applies.

The backends never materialise these (they fuse the softmax with the value product); this module
computes them from the same window geometry (:func:`nat.ops.spec.neighbor_table`), the same
scale and the same relative positional bias indexing, so that for every backend
``na(q, k, v) == sum_p weights[..., p] * v[neighbour p]``. Neighbour ``p`` of a query is the
``p``-th entry of its window in row-major order over the kernel offsets (axis 0 slowest), the
order of :func:`neighbors`. Meant for inspection and figures: memory grows with
``B * heads * N * prod(kernel_size) * D`` for :func:`attention_weights`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .spec import NAParams, check_na_args, check_window_args, neighbor_table

__all__ = ["attention_weights", "neighbors", "query_attention_weights"]

IntOrTuple = int | Sequence[int]
BoolOrTuple = bool | Sequence[bool]


def neighbors(
    spatial: Sequence[int],
    position: Sequence[int],
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = 1,
    dilation: IntOrTuple | None = 1,
    is_causal: BoolOrTuple | None = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The neighbourhood of the query at ``position`` in an input of extent ``spatial``.

    Returns ``(coords, valid)``: ``coords`` ``[prod(kernel_size), ndim]`` (long), the position of
    each neighbour in window order, and ``valid`` ``[prod(kernel_size)]`` (bool), False for the
    slots a causal window near the start leaves empty (their coordinates are then the query's).
    """
    spatial = tuple(int(s) for s in spatial)
    params = check_window_args(spatial, kernel_size, stride, dilation, is_causal)
    flat = _flat_position(spatial, position)
    keys, valid, _ = neighbor_table(spatial, params, torch.device("cpu"))
    return _unravel(keys[flat].long(), spatial), _valid_row(valid, flat, params)


def attention_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = 1,
    dilation: IntOrTuple | None = 1,
    is_causal: BoolOrTuple | None = False,
    scale: float | None = None,
    *,
    rpb: torch.Tensor | None = None,
) -> torch.Tensor:
    """Every query's attention weights over its neighbourhood.

    Args:
        query: ``[B, *spatial, heads, D]`` (1, 2 or 3 spatial axes).
        key: ``[B, *spatial, heads_kv, D]`` (``heads`` a multiple of ``heads_kv``).
        kernel_size, stride, dilation, is_causal, scale, rpb: as for
            :func:`nat.neighborhood_attention`.

    Returns:
        ``[B, heads, *spatial, prod(kernel_size)]`` probabilities in float32 (float64 for
        float64 inputs): each row sums to one; empty causal slots get zero. Entry ``p`` belongs
        to neighbour ``p`` of :func:`neighbors`.
    """
    params = _check(query, key, kernel_size, stride, dilation, is_causal, scale, rpb)
    spatial = tuple(query.shape[1:-2])
    keys, valid, bias_index = neighbor_table(spatial, params, query.device)
    rows = torch.arange(keys.shape[0], device=query.device)
    probs = _softmax(query.flatten(1, -3), key, rows, keys, valid, bias_index, rpb, params)
    return probs.reshape(query.shape[0], query.shape[-2], *spatial, params.window)


def query_attention_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    position: Sequence[int],
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = 1,
    dilation: IntOrTuple | None = 1,
    is_causal: BoolOrTuple | None = False,
    scale: float | None = None,
    *,
    rpb: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One query's attention weights and where its neighbours are.

    Args:
        query, key: as for :func:`attention_weights`.
        position: the query's index on each spatial axis (``(row, column)`` in 2-D).

    Returns:
        ``(coords, weights)``: ``coords`` ``[prod(kernel_size), ndim]`` as :func:`neighbors`
        gives them, ``weights`` ``[B, heads, prod(kernel_size)]``, equal to
        ``attention_weights(...)[:, :, *position]`` but computed for this query alone.
    """
    params = _check(query, key, kernel_size, stride, dilation, is_causal, scale, rpb)
    spatial = tuple(query.shape[1:-2])
    flat = _flat_position(spatial, position)
    keys, valid, bias_index = neighbor_table(spatial, params, query.device)
    rows = torch.tensor([flat], device=query.device)
    q = query.flatten(1, -3)[:, rows]
    probs = _softmax(q, key, rows, keys, valid, bias_index, rpb, params)
    coords = _unravel(keys[flat].long().cpu(), spatial)
    return coords, probs[:, :, 0]


def _check(query, key, kernel_size, stride, dilation, is_causal, scale, rpb) -> NAParams:
    ndim = query.dim() - 3 if isinstance(query, torch.Tensor) else 0
    if ndim not in (1, 2, 3):
        shape = tuple(query.shape) if isinstance(query, torch.Tensor) else type(query).__name__
        raise ValueError(
            f"query has shape {shape}; expected [batch, *spatial, heads, head_dim] "
            f"with 1, 2 or 3 spatial axes"
        )
    # The weights do not depend on values: key stands in for value in the shared checks.
    return check_na_args(
        query, key, key, ndim, kernel_size, stride, dilation, is_causal, scale, rpb
    )


def _flat_position(spatial: tuple[int, ...], position: Sequence[int]) -> int:
    position = tuple(position)
    if len(position) != len(spatial) or any(
        isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < s
        for p, s in zip(position, spatial, strict=False)
    ):
        raise ValueError(
            f"position={position!r} must hold {len(spatial)} integers inside the input "
            f"{spatial} (0 <= position[i] < spatial[i])"
        )
    flat = 0
    for p, s in zip(position, spatial, strict=True):
        flat = flat * s + p
    return flat


def _unravel(flat: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Flat row-major indices ``[P]`` -> coordinates ``[P, ndim]``."""
    coords = []
    for s in reversed(spatial):
        coords.append(flat % s)
        flat = flat // s
    return torch.stack(coords[::-1], dim=-1)


def _valid_row(valid: torch.Tensor | None, flat: int, params: NAParams) -> torch.Tensor:
    if valid is None:
        return torch.ones(params.window, dtype=torch.bool)
    return valid[flat].cpu()


def _softmax(
    q: torch.Tensor,
    key: torch.Tensor,
    rows: torch.Tensor,
    keys: torch.Tensor,
    valid: torch.Tensor | None,
    bias_index: torch.Tensor,
    rpb: torch.Tensor | None,
    params: NAParams,
) -> torch.Tensor:
    """Probabilities ``[B, heads, R, window]`` of the queries ``q`` ``[B, R, heads, D]`` at the
    flat positions ``rows`` ``[R]``, against ``key`` ``[B, *spatial, heads_kv, D]``."""
    compute = torch.promote_types(q.dtype, torch.float32)
    heads, heads_kv = q.shape[-2], key.shape[-2]
    k = key.flatten(1, -3).to(compute)  # [B, N, heads_kv, D]
    k = k.repeat_interleave(heads // heads_kv, dim=2)
    neighbours = k[:, keys[rows].long()]  # [B, R, window, heads, D]
    scores = torch.einsum("brhd,brphd->bhrp", q.to(compute), neighbours) * params.scale
    if rpb is not None:
        scores = scores + rpb.to(compute).flatten(1)[:, bias_index[rows].long()]
    if valid is not None:
        scores = scores.masked_fill(~valid[rows], float("-inf"))
    return scores.softmax(dim=-1)
