"""The functional API: ``na1d``, ``na2d``, ``na3d``.

A drop-in superset of NATTEN 0.21's functions of the same names (layout
``[batch, *spatial, heads, head_dim]``, same window semantics) plus relative positional bias.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .dispatch import na_op
from .spec import check_na_args

__all__ = ["na1d", "na2d", "na3d", "neighborhood_attention"]

IntOrTuple = int | Sequence[int]
BoolOrTuple = bool | Sequence[bool]


def neighborhood_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: float | None = None,
    rpb: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Neighborhood attention over however many spatial axes the inputs have (1, 2 or 3).

    Args:
        query, key: ``[B, *spatial, heads, D]``.
        value: ``[B, *spatial, heads, Dv]``.
        kernel_size, stride, dilation, is_causal: one value, or one per spatial axis.
        scale: multiplies ``q . k``; default ``D ** -0.5``.
        rpb: relative positional bias ``[heads, *(2 * kernel_size - 1)]``, added after scaling.
        backend: ``"auto"`` (default), ``"reference"``, or a registered backend's name.

    Returns:
        ``[B, *spatial, heads, Dv]``, the dtype of ``value``.
    """
    ndim = query.dim() - 3 if isinstance(query, torch.Tensor) else 0
    if ndim not in (1, 2, 3):
        shape = tuple(query.shape) if isinstance(query, torch.Tensor) else type(query).__name__
        raise ValueError(
            f"query has shape {shape}; expected [batch, *spatial, heads, head_dim] "
            f"with 1, 2 or 3 spatial axes"
        )
    params = check_na_args(
        query, key, value, ndim, kernel_size, stride, dilation, is_causal, scale, rpb
    )
    return na_op(query, key, value, rpb, params, backend)


def _fixed_rank(ndim: int):
    def na(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
        scale: float | None = None,
        rpb: torch.Tensor | None = None,
        backend: str | None = None,
    ) -> torch.Tensor:
        params = check_na_args(
            query, key, value, ndim, kernel_size, stride, dilation, is_causal, scale, rpb
        )
        return na_op(query, key, value, rpb, params, backend)

    spatial = {1: "L", 2: "H, W", 3: "T, H, W"}[ndim]
    na.__name__ = na.__qualname__ = f"na{ndim}d"
    na.__doc__ = (
        f"{ndim}-D neighborhood attention: query/key ``[B, {spatial}, heads, D]``, value "
        f"``[B, {spatial}, heads, Dv]``, rpb ``[heads{', 2K-1' * ndim}]``; returns "
        f"``[B, {spatial}, heads, Dv]``. See :func:`neighborhood_attention` for the arguments."
    )
    return na


na1d = _fixed_rank(1)
na2d = _fixed_rank(2)
na3d = _fixed_rank(3)
