"""The readable definition of neighborhood attention, used by the tests as ground truth.

It builds the dense ``N x N`` neighbour relation straight from the spec's per-axis predicate and
runs ordinary masked attention: slow and memory-hungry, but easy to audit line by line.
"""

from __future__ import annotations

import torch

from .spec import NAParams

__all__ = ["axis_relation", "na_reference"]


def axis_relation(
    length: int, kernel: int, stride: int, dilation: int, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(is_neighbor, rpb_index)``, both ``[length, length]`` (query, key), for one axis."""
    left = kernel // 2
    right = kernel // 2 if kernel % 2 else kernel // 2 - 1
    is_neighbor = torch.zeros(length, length, dtype=torch.bool)
    rpb_index = torch.zeros(length, length, dtype=torch.long)
    for i in range(length):
        for j in range(length):
            if i % dilation != j % dilation:
                continue
            qi, kj = i // dilation, j // dilation
            group_len = -(-(length - i % dilation) // dilation)
            if causal:
                leader = min((qi // stride) * stride + stride - 1, group_len - 1)
                is_neighbor[i, j] = kj <= qi and leader - kj < kernel
            else:
                leader = min((qi // stride) * stride + stride // 2, group_len - 1)
                centre = min(max(leader, left), group_len - 1 - right)
                is_neighbor[i, j] = centre - left <= kj <= centre + right
            if is_neighbor[i, j]:
                rpb_index[i, j] = kj - qi + kernel - 1
    return is_neighbor, rpb_index


def na_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    params: NAParams,
    rpb: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense masked attention over the neighbour relation.

    ``query``/``key`` ``[B, *spatial, heads, D]``, ``value`` ``[B, *spatial, heads, Dv]``,
    ``rpb`` ``[heads, *(2K - 1)]``; returns ``[B, *spatial, heads, Dv]``. Computes in float32
    (float64 for float64 inputs) and differentiates through plain autograd.
    """
    spatial = tuple(query.shape[1:-2])
    batch, heads = query.shape[0], query.shape[-2]
    n = len(spatial)
    compute = torch.float64 if query.dtype == torch.float64 else torch.float32
    mask = torch.ones((), dtype=torch.bool)
    rpb_indices = []
    for axis, length in enumerate(spatial):
        rel, idx = axis_relation(
            length,
            params.kernel_size[axis],
            params.stride[axis],
            params.dilation[axis],
            params.is_causal[axis],
        )
        # Query axis `axis` and key axis `axis` as dimensions of a [*q_spatial, *k_spatial] grid.
        shape = [1] * (2 * n)
        shape[axis], shape[n + axis] = length, length
        mask = mask & rel.view(shape)
        rpb_indices.append(idx.view(shape).to(query.device))
    total = 1
    for length in spatial:
        total *= length
    q, k, v = (
        t.to(compute).reshape(batch, total, heads, t.shape[-1]).transpose(1, 2)
        for t in (query, key, value)
    )
    scores = params.scale * (q @ k.transpose(-1, -2))
    if rpb is not None:
        bias = rpb.to(compute)[(slice(None), *rpb_indices)]  # [heads, *q_spatial, *k_spatial]
        scores = scores + bias.reshape(heads, total, total)
    scores = scores.masked_fill(~mask.reshape(total, total).to(query.device), float("-inf"))
    out = scores.softmax(dim=-1) @ v
    return out.transpose(1, 2).reshape(value.shape).to(value.dtype)
