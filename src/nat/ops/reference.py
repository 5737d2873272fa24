"""The readable definition of neighborhood attention, used by the tests as ground truth.

Written from ``docs/neighborhood-attention.md`` alone, independently of :mod:`nat.ops.spec`'s
window geometry (which every other backend shares), so that comparing a backend with it also
checks that geometry. Each axis gets a dense ``[length, length]`` neighbour relation computed
from per-axis distances, for all query/key pairs at once; the axes combine into an ``N x N``
mask, and ordinary masked attention runs over it: memory-hungry, but easy to audit against the
document line by line.
"""

from __future__ import annotations

import math

import torch

from .spec import NAParams

__all__ = ["axis_relation", "na_reference"]


def axis_relation(
    length: int, kernel: int, stride: int, dilation: int, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(is_neighbor, rpb_index)``, both ``[length, length]`` (query, key), for one axis.

    ``rpb_index`` is ``(j // dilation) - (i // dilation) + kernel - 1`` where ``is_neighbor``
    holds, and 0 elsewhere.
    """
    i = torch.arange(length).unsqueeze(1)  # query position, down the rows
    j = torch.arange(length).unsqueeze(0)  # key position, across the columns
    # 1. Dilation groups: a query sees only keys of its residue, in group coordinates.
    residue = i % dilation
    same_group = j % dilation == residue
    qi, kj = i // dilation, j // dilation
    group_len = (length - residue + dilation - 1) // dilation
    if causal:
        # 3. Up to K keys ending at the stride group's last query, none after the query itself.
        leader = torch.minimum((qi // stride) * stride + stride - 1, group_len - 1)
        inside = (kj <= qi) & (leader - kj < kernel)
    else:
        # 2. K keys around the centre: `left` before it, `right` after it (one fewer for even K).
        left = kernel // 2
        right = kernel // 2 if kernel % 2 else kernel // 2 - 1
        leader = torch.minimum((qi // stride) * stride + stride // 2, group_len - 1)
        centre = torch.minimum(leader.clamp(min=left), group_len - 1 - right)
        offset = kj - centre
        inside = (-left <= offset) & (offset <= right)
    is_neighbor = same_group & inside
    rpb_index = torch.where(is_neighbor, kj - qi + kernel - 1, 0)
    return is_neighbor, rpb_index


def na_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    params: NAParams,
    rpb: torch.Tensor | None = None,
    additional_keys: torch.Tensor | None = None,
    additional_values: torch.Tensor | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Dense masked attention over the neighbour relation (and any additional tokens).

    ``query`` ``[B, *spatial, heads, D]``, ``key`` ``[B, *spatial, heads_kv, D]``, ``value``
    ``[B, *spatial, heads_kv, Dv]`` (query head ``h`` reads key/value head
    ``h // (heads // heads_kv)``), ``rpb`` ``[heads, *(2K - 1)]``, ``additional_keys`` /
    ``additional_values`` ``[B, M, heads_kv, D or Dv]``: ``M`` tokens every query attends to
    besides its neighbours, in the same softmax, without bias. Returns ``[B, *spatial, heads, Dv]``
    in ``value``'s dtype, and with ``return_lse`` also the log-sum-exp of the scores
    ``[B, *spatial, heads]`` (float32, float64 for float64 inputs). Computes in float32 (float64
    for float64 inputs) and differentiates through plain autograd.
    """
    spatial = tuple(query.shape[1:-2])
    batch, heads = query.shape[0], query.shape[-2]
    n = len(spatial)
    total = math.prod(spatial)
    compute = torch.float64 if query.dtype == torch.float64 else torch.float32
    # The neighbourhood is the Cartesian product of the axes' neighbourhoods: on a
    # [*q_spatial, *k_spatial] grid, query axis `axis` and key axis `axis` carry axis `axis`'s
    # relation, and a pair is a neighbour when it is one on every axis.
    mask = torch.ones((), dtype=torch.bool)
    rpb_indices = []
    for axis, length in enumerate(spatial):
        relation, index = axis_relation(
            length,
            params.kernel_size[axis],
            params.stride[axis],
            params.dilation[axis],
            params.is_causal[axis],
        )
        shape = [1] * (2 * n)
        shape[axis], shape[n + axis] = length, length
        mask = mask & relation.view(shape)
        rpb_indices.append(index.view(shape).to(query.device))
    mask = mask.reshape(total, total).to(query.device)

    def heads_first(t: torch.Tensor) -> torch.Tensor:
        """``[B, *tokens, heads_kv, D]`` -> ``[B, heads, tokens, D]``, key/value heads repeated."""
        t = t.to(compute).reshape(batch, math.prod(t.shape[1:-2]), *t.shape[-2:]).transpose(1, 2)
        return t.repeat_interleave(heads // t.shape[1], dim=1) if t.shape[1] else t

    q, k, v = heads_first(query), heads_first(key), heads_first(value)
    scores = params.scale * (q @ k.transpose(-1, -2))
    if rpb is not None:
        bias = rpb.to(compute)[(slice(None), *rpb_indices)]  # [heads, *q_spatial, *k_spatial]
        scores = scores + bias.reshape(heads, total, total)
    scores = scores.masked_fill(~mask, float("-inf"))
    if additional_keys is not None:
        extra_k, extra_v = heads_first(additional_keys), heads_first(additional_values)
        scores = torch.cat([scores, params.scale * (q @ extra_k.transpose(-1, -2))], dim=-1)
        v = torch.cat([v, extra_v], dim=-2)
    out = scores.softmax(dim=-1) @ v
    out = out.transpose(1, 2).reshape(*query.shape[:-1], value.shape[-1]).to(value.dtype)
    if not return_lse:
        return out
    return out, scores.logsumexp(dim=-1).transpose(1, 2).reshape(query.shape[:-1])
