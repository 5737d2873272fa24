"""The functional API: ``na1d``, ``na2d``, ``na3d``, dense ``attention`` and ``merge_attentions``.

A superset of NATTEN 0.21's functions of the same names: the same layout
``[batch, *spatial, heads, head_dim]``, window semantics and arguments (grouped-query key/value
heads, ``return_lse``, ``additional_keys``/``additional_values``, NATTEN's backend names and
tuning arguments), plus relative positional bias. ``docs/neighborhood-attention.md`` lists every
NATTEN argument and its status here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from .dispatch import na_op
from .spec import check_additional_kv, check_dense_args, check_merge_args, check_na_args

__all__ = ["attention", "merge_attentions", "na1d", "na2d", "na3d", "neighborhood_attention"]

IntOrTuple = int | Sequence[int]
BoolOrTuple = bool | Sequence[bool]

_TUNING_DEFAULTS = {
    "q_tile_shape": None,
    "kv_tile_shape": None,
    "backward_q_tile_shape": None,
    "backward_kv_tile_shape": None,
    "backward_kv_splits": None,
    "backward_use_pt_reduction": False,
    "run_persistent_kernel": True,
    "kernel_schedule": None,
    "torch_compile": False,
    "attention_kwargs": None,
}
"""NATTEN's performance arguments and their defaults. No backend here has these notions (tile
shapes, kernel schedules, persistent kernels are CUDA-kernel settings of NATTEN's own kernels), so
a non-default value is accepted and ignored, with one note per argument and process."""

_NOTED: set[str] = set()


def _note_ignored(tuning: dict[str, object]) -> None:
    for name, value in tuning.items():
        if value != _TUNING_DEFAULTS[name] and name not in _NOTED:
            _NOTED.add(name)
            warnings.warn(
                f"{name}={value!r} is a tuning argument of NATTEN's kernels; nat accepts it for "
                f"compatibility and ignores it (noted once)",
                UserWarning,
                stacklevel=4,  # the caller of na1d/na2d/na3d
            )


def neighborhood_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = 1,
    dilation: IntOrTuple | None = 1,
    is_causal: BoolOrTuple | None = False,
    scale: float | None = None,
    additional_keys: torch.Tensor | None = None,
    additional_values: torch.Tensor | None = None,
    attention_kwargs: dict | None = None,
    backend: str | None = None,
    q_tile_shape: IntOrTuple | None = None,
    kv_tile_shape: IntOrTuple | None = None,
    backward_q_tile_shape: IntOrTuple | None = None,
    backward_kv_tile_shape: IntOrTuple | None = None,
    backward_kv_splits: IntOrTuple | None = None,
    backward_use_pt_reduction: bool = False,
    run_persistent_kernel: bool = True,
    kernel_schedule: object = None,
    torch_compile: bool = False,
    return_lse: bool = False,
    *,
    rpb: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Neighborhood attention over however many spatial axes the inputs have (1, 2 or 3).

    Args:
        query: ``[B, *spatial, heads, D]``.
        key: ``[B, *spatial, heads_kv, D]``; ``heads`` must be a multiple of ``heads_kv``
            (grouped-query / multi-query attention: query head ``h`` reads key/value head
            ``h // (heads // heads_kv)``).
        value: ``[B, *spatial, heads_kv, Dv]``.
        kernel_size, stride, dilation, is_causal: one value, or one per spatial axis; ``None``
            for the last three means the default (1, 1, False).
        scale: multiplies ``q . k``; ``None`` means ``D ** -0.5`` (``0.0`` means zero).
        additional_keys, additional_values: ``[B, M, heads_kv, D]`` and ``[B, M, heads_kv, Dv]``:
            ``M`` tokens every query attends to besides its neighbourhood, in the same softmax
            (merged exactly through the log-sum-exps); both or neither.
        backend: ``"auto"`` (default), ``"reference"``, a registered backend's name, or one of
            NATTEN's (``"cutlass-fna"``, ``"hopper-fna"``, ``"blackwell-fna"`` run ``"auto"``,
            ``"flex-fna"`` runs ``"torch"``).
        attention_kwargs, q_tile_shape, ..., torch_compile: NATTEN's tuning arguments, accepted
            and ignored (a one-time note for each non-default value).
        return_lse: also return the log-sum-exp of each query's scores.
        rpb: relative positional bias ``[heads, *(2 * kernel_size - 1)]``, added after scaling
            (keyword only: NATTEN 0.21 has no such argument).

    Returns:
        ``[B, *spatial, heads, Dv]`` in ``value``'s dtype; with ``return_lse`` also
        ``[B, *spatial, heads]`` (float32, float64 for float64 inputs), differentiable.
    """
    ndim = query.dim() - 3 if isinstance(query, torch.Tensor) else 0
    if ndim not in (1, 2, 3):
        shape = tuple(query.shape) if isinstance(query, torch.Tensor) else type(query).__name__
        raise ValueError(
            f"query has shape {shape}; expected [batch, *spatial, heads, head_dim] "
            f"with 1, 2 or 3 spatial axes"
        )
    return _na(
        ndim,
        query,
        key,
        value,
        kernel_size,
        stride,
        dilation,
        is_causal,
        scale,
        additional_keys,
        additional_values,
        backend,
        return_lse,
        rpb,
        {
            "q_tile_shape": q_tile_shape,
            "kv_tile_shape": kv_tile_shape,
            "backward_q_tile_shape": backward_q_tile_shape,
            "backward_kv_tile_shape": backward_kv_tile_shape,
            "backward_kv_splits": backward_kv_splits,
            "backward_use_pt_reduction": backward_use_pt_reduction,
            "run_persistent_kernel": run_persistent_kernel,
            "kernel_schedule": kernel_schedule,
            "torch_compile": torch_compile,
            "attention_kwargs": attention_kwargs,
        },
    )


def _na(
    ndim: int,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None,
    dilation: IntOrTuple | None,
    is_causal: BoolOrTuple | None,
    scale: float | None,
    additional_keys: torch.Tensor | None,
    additional_values: torch.Tensor | None,
    backend: str | None,
    return_lse: bool,
    rpb: torch.Tensor | None,
    tuning: dict[str, object],
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    params = check_na_args(
        query, key, value, ndim, kernel_size, stride, dilation, is_causal, scale, rpb
    )
    extra = check_additional_kv(query, key, value, additional_keys, additional_values)
    attention_kwargs = tuning["attention_kwargs"]
    if attention_kwargs is not None and not isinstance(attention_kwargs, dict):
        raise TypeError(f"attention_kwargs={attention_kwargs!r} must be a dict or None")
    _note_ignored(tuning)
    if not extra:
        return na_op(query, key, value, rpb, params, backend, return_lse)
    out, lse = na_op(query, key, value, rpb, params, backend, return_lse=True)
    tokens = query.flatten(1, ndim)
    extra_out, extra_lse = attention(
        tokens, additional_keys, additional_values, scale=params.scale, return_lse=True
    )
    out, lse = merge_attentions([out, extra_out.view(out.shape)], [lse, extra_lse.view(lse.shape)])
    return (out, lse) if return_lse else out


def _fixed_rank(ndim: int):
    def na(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kernel_size: IntOrTuple,
        stride: IntOrTuple | None = 1,
        dilation: IntOrTuple | None = 1,
        is_causal: BoolOrTuple | None = False,
        scale: float | None = None,
        additional_keys: torch.Tensor | None = None,
        additional_values: torch.Tensor | None = None,
        attention_kwargs: dict | None = None,
        backend: str | None = None,
        q_tile_shape: IntOrTuple | None = None,
        kv_tile_shape: IntOrTuple | None = None,
        backward_q_tile_shape: IntOrTuple | None = None,
        backward_kv_tile_shape: IntOrTuple | None = None,
        backward_kv_splits: IntOrTuple | None = None,
        backward_use_pt_reduction: bool = False,
        run_persistent_kernel: bool = True,
        kernel_schedule: object = None,
        torch_compile: bool = False,
        return_lse: bool = False,
        *,
        rpb: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return _na(
            ndim,
            query,
            key,
            value,
            kernel_size,
            stride,
            dilation,
            is_causal,
            scale,
            additional_keys,
            additional_values,
            backend,
            return_lse,
            rpb,
            {
                "q_tile_shape": q_tile_shape,
                "kv_tile_shape": kv_tile_shape,
                "backward_q_tile_shape": backward_q_tile_shape,
                "backward_kv_tile_shape": backward_kv_tile_shape,
                "backward_kv_splits": backward_kv_splits,
                "backward_use_pt_reduction": backward_use_pt_reduction,
                "run_persistent_kernel": run_persistent_kernel,
                "kernel_schedule": kernel_schedule,
                "torch_compile": torch_compile,
                "attention_kwargs": attention_kwargs,
            },
        )

    spatial = {1: "L", 2: "H, W", 3: "T, H, W"}[ndim]
    na.__name__ = na.__qualname__ = f"na{ndim}d"
    na.__doc__ = (
        f"{ndim}-D neighborhood attention: query ``[B, {spatial}, heads, D]``, key/value "
        f"``[B, {spatial}, heads_kv, D/Dv]``, rpb ``[heads{', 2K-1' * ndim}]``; returns "
        f"``[B, {spatial}, heads, Dv]`` (and ``[B, {spatial}, heads]`` with ``return_lse``). "
        f"NATTEN 0.21's signature plus keyword-only ``rpb``; see "
        f":func:`neighborhood_attention` for the arguments."
    )
    return na


na1d = _fixed_rank(1)
na2d = _fixed_rank(2)
na3d = _fixed_rank(3)


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Dense (self or cross) attention, NATTEN's ``attention`` without its varlen arguments.

    Args:
        query: ``[B, Nq, heads, D]``.
        key: ``[B, Nk, heads_kv, D]`` (``heads`` a multiple of ``heads_kv``).
        value: ``[B, Nk, heads_kv, Dv]``.
        is_causal: query ``i`` attends to keys ``j <= i`` only (needs ``Nq == Nk``).
        scale: multiplies ``q . k``; ``None`` means ``D ** -0.5`` (``0.0`` means zero).
        return_lse: also return the log-sum-exp of each query's scores.

    Returns:
        ``[B, Nq, heads, Dv]`` in ``value``'s dtype; with ``return_lse`` also ``[B, Nq, heads]``
        (float32, float64 for float64 inputs). Runs as plain PyTorch ops in float32 (float64 for
        float64 inputs) with a ``[B, heads, Nq, Nk]`` score matrix, differentiable by autograd: it
        is meant for the few extra tokens of :func:`neighborhood_attention`, and for merging.
    """
    scale = check_dense_args(query, key, value, is_causal, scale)
    batch, n_q, heads, dim = query.shape
    heads_kv, n_k = key.shape[2], key.shape[1]
    compute = torch.promote_types(query.dtype, torch.float32)
    groups = heads // heads_kv if heads_kv else 1
    # Query heads of one group become rows of one key/value head: nothing is repeated.
    q = query.to(compute).transpose(1, 2).reshape(batch, heads_kv, groups * n_q, dim)
    k = key.to(compute).transpose(1, 2)
    v = value.to(compute).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) * scale
    if is_causal:
        future = torch.ones(n_q, n_k, dtype=torch.bool, device=query.device).triu(1)
        scores = scores.masked_fill(future.repeat(groups, 1), float("-inf"))
    lse = scores.logsumexp(dim=-1)
    out = torch.exp(scores - lse.unsqueeze(-1)) @ v
    out = out.reshape(batch, heads, n_q, -1).transpose(1, 2).to(value.dtype)
    if not return_lse:
        return out
    return out, lse.reshape(batch, heads, n_q).transpose(1, 2)


def merge_attentions(
    outputs: Sequence[torch.Tensor],
    lse_tensors: Sequence[torch.Tensor],
    torch_compile: bool = True,
    use_autograd_fix: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge attentions of the same queries over disjoint key sets into one over their union.

    ``outputs[i]`` ``[B, *tokens, heads, Dv]`` and ``lse_tensors[i]`` ``[B, *tokens, heads]`` are
    the output and log-sum-exp of attention over key set ``i``; the result is exactly the
    attention over all keys: ``lse = logsumexp_i(lse_i)`` and
    ``out = sum_i exp(lse_i - lse) * out_i``. Differentiable through outputs and log-sum-exps.
    ``torch_compile`` and ``use_autograd_fix`` are NATTEN's switches, accepted and unused (plain
    autograd differentiates this correctly).

    Returns:
        ``(out, lse)``: ``out`` in ``outputs[0]``'s dtype, ``lse`` in float32 (float64 for
        float64 log-sum-exps).
    """
    check_merge_args(outputs, lse_tensors)
    compute = torch.promote_types(lse_tensors[0].dtype, torch.float32)
    lses = torch.stack([lse.to(compute) for lse in lse_tensors])
    lse = torch.logsumexp(lses, dim=0)
    weights = torch.exp(lses - lse).unsqueeze(-1)
    out = sum(w * o.to(compute) for w, o in zip(weights, outputs, strict=True))
    return out.to(outputs[0].dtype), lse
