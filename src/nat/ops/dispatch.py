"""Backend choice, operator registration, autograd and FLOP formulas.

The operator is declared once with ``torch.library``: ``nat::na_forward`` and ``nat::na_backward``
with their fake (shape) functions, the autograd formula joining them, and the FLOP formula, so
eager mode, ``torch.compile`` and ``FlopCounterMode`` all see the same op. A backend is a pair of
functions ``forward(q, k, v, rpb, params, need_lse) -> (out, lse)`` and
``backward(grad_out, q, k, v, rpb, out, lse, params, grad_lse=None) -> (dq, dk, dv, drpb)``, where
key/value may have fewer heads than the query (grouped-query attention) and ``grad_lse`` is the
gradient reaching the log-sum-exp when the caller asked for it (``return_lse``); new backends
register themselves with :func:`register_backend`, with a ``can_run`` check saying per call
whether they run it (and if not, why): ``"auto"`` takes the best backend whose check passes, an
explicit ``backend=`` whose check fails raises that reason. Calls whose windows cover the whole
input go to dense GEMMs here, for every backend (the ``cpu`` backend keeps its fused backward);
attention dropout goes to a backend that has it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch.utils.flop_counter import register_flop_formula

from . import cpu, flex, reference, torch_backend
from . import triton as triton_backend
from .spec import NAParams, covers_input

__all__ = [
    "Backend",
    "available_backends",
    "default_backend",
    "na_flops",
    "na_op",
    "na_packed_op",
    "register_backend",
    "resolve_backend",
    "use_backend",
    "why_not",
]


class Backend(NamedTuple):
    """A neighborhood-attention implementation the dispatcher can route to."""

    forward: Callable
    backward: Callable
    devices: tuple[str, ...]
    """Device types on which ``"auto"`` considers it (and :func:`available_backends` lists it)."""
    is_available: Callable[[], bool]
    priority: int
    """Higher wins when the user asks for ``"auto"``."""
    can_run: Callable[..., str | None]
    """``can_run(query, key, value, rpb, params)``: ``None`` when it runs this call, otherwise
    why not (a phrase such as ``"head_dim 200 > 128"``). The one check behind both ``"auto"``
    and the error for an explicit ``backend=``."""
    dropout: Callable | None
    """``dropout(query, key, value, rpb, params, p)``: the forward with attention dropout
    (differentiated by autograd), or ``None`` when the backend has none."""
    backward_packed: Callable | None = None
    """``backward_packed(grad_out, qkv, rpb, out, lse, params, grad_lse=None) -> (dqkv, drpb)``
    for q/k/v packed as ``[B, *spatial, 3, heads, D]``: the gradient as one contiguous tensor of
    ``qkv``'s shape. ``None``: :attr:`backward`'s three gradients are stacked."""
    autograd_forward: Callable | None = None
    """``autograd_forward(query, key, value, rpb, params) -> (out, lse)``, differentiable by
    autograd, for a backend whose backward is its library's own autograd (FlexAttention's): calls
    that need gradients run it instead of the registered op. Inside the op nothing could be
    differentiated: a custom op's implementation runs below autograd, recording no graph."""
    forward_saving: Callable | None = None
    """``forward_saving(query, key, value, rpb, params) -> (out, lse, saved)``: the forward for
    autograd, keeping ``saved`` (a tensor; empty when it keeps nothing for the call), which
    :attr:`backward` and :attr:`backward_packed` then take as ``saved=``. ``None``: the forward
    with ``need_lse=True``, keeping nothing."""
    saved_shape: Callable | None = None
    """``saved_shape(query, value, params)``: the shape of what :attr:`forward_saving` keeps, for
    fake tensors (``torch.compile``)."""


_BACKENDS: dict[str, Backend] = {}
_DEFAULT: list[str] = ["auto"]

NATTEN_BACKENDS = {
    "cutlass-fna": "auto",
    "hopper-fna": "auto",
    "blackwell-fna": "auto",
    "flex-fna": "torch",
}
"""NATTEN 0.21's backend names and the backend each runs here: its fused kernels map to the best
fused kernel for the device (``"auto"``), its Flex Attention one to ``"torch"`` (``"flex"`` has no
backward on the CPU)."""


def _device_reason(devices: tuple[str, ...], device: torch.device) -> str | None:
    if device.type not in devices:
        return f"runs on {list(devices)}, but the inputs are on {device}"
    return None


def device_check(devices: tuple[str, ...]) -> Callable[..., str | None]:
    """A ``can_run`` that accepts any call whose tensors are on one of ``devices``."""
    return lambda query, *args: _device_reason(devices, query.device)


def register_backend(
    name: str,
    forward: Callable,
    backward: Callable,
    devices: tuple[str, ...],
    is_available: Callable[[], bool] = lambda: True,
    priority: int = 0,
    can_run: Callable[..., str | None] | None = None,
    dropout: Callable | None = None,
    backward_packed: Callable | None = None,
    autograd_forward: Callable | None = None,
    forward_saving: Callable | None = None,
    saved_shape: Callable | None = None,
) -> None:
    """Make ``name`` selectable with ``backend=name`` and candidate for ``"auto"``.

    ``can_run`` defaults to accepting every call on ``devices``; the optional functions are
    :class:`Backend`'s fields of the same names.
    """
    check = device_check(devices) if can_run is None else can_run
    _BACKENDS[name] = Backend(
        forward,
        backward,
        devices,
        is_available,
        priority,
        check,
        dropout,
        backward_packed,
        autograd_forward,
        forward_saving,
        saved_shape,
    )


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Names usable on ``device`` (every device when ``None``), best first, then ``reference``."""
    dev = None if device is None else torch.device(device).type
    names = sorted(
        (n for n, b in _BACKENDS.items() if (dev is None or dev in b.devices) and b.is_available()),
        key=lambda n: -_BACKENDS[n].priority,
    )
    return [*names, "reference"]


def default_backend() -> str:
    """The backend used when a call passes ``backend=None``."""
    return _DEFAULT[-1]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Route neighborhood attention in this block to ``name`` (``"auto"`` restores the choice)."""
    _DEFAULT.append(_check_backend_name(name))
    try:
        yield
    finally:
        _DEFAULT.pop()


def _check_backend_name(name: object) -> str:
    """``name``, or the backend a NATTEN backend name maps to (:data:`NATTEN_BACKENDS`)."""
    valid = ["auto", "reference", *_BACKENDS]
    if isinstance(name, str) and name in NATTEN_BACKENDS:
        return NATTEN_BACKENDS[name]
    if not isinstance(name, str) or name not in valid:
        raise ValueError(
            f"backend={name!r} is not one of {valid} (or NATTEN's {list(NATTEN_BACKENDS)}, "
            f"which map to {sorted(set(NATTEN_BACKENDS.values()))})"
        )
    return name


def why_not(
    name: str, device: torch.device, inputs: tuple | None = None, dropout: float = 0.0
) -> str | None:
    """Why backend ``name`` cannot run a call on ``device``, or ``None`` when it can.

    ``inputs`` is ``(query, key, value, rpb, params)`` of the call (``None``: judge the device
    alone); ``dropout`` is the attention-dropout probability it must apply.
    """
    if name == "reference":
        return "has no attention dropout" if dropout else None
    backend = _BACKENDS[name]
    if not backend.is_available():
        detail = None if inputs is None else backend.can_run(*inputs)
        return "is not available on this machine" + ("" if detail is None else f"; it {detail}")
    if dropout and backend.dropout is None:
        return f"has no attention dropout (p={dropout}); 'torch' has"
    if inputs is None:
        return _device_reason(backend.devices, device)
    return backend.can_run(*inputs)


def resolve_backend(
    name: str | None, device: torch.device, inputs: tuple | None = None, dropout: float = 0.0
) -> str:
    """The concrete backend for a call: ``name`` if it can run it, or the best one that can.

    ``inputs`` (``(query, key, value, rpb, params)``) and ``dropout`` are checked against each
    backend's :attr:`Backend.can_run`; without ``inputs`` only the device is.
    """
    name = _check_backend_name(default_backend() if name is None else name)
    if name == "auto":
        reasons = []
        for candidate in available_backends(device):
            reason = why_not(candidate, device, inputs, dropout)
            if reason is None:
                return candidate
            reasons.append(f"{candidate!r} {reason}")
        raise ValueError(f"no backend can run this call on {device}: {'; '.join(reasons)}")
    reason = why_not(name, device, inputs, dropout)
    if reason is not None:
        raise ValueError(f"backend={name!r} {reason}")
    return name


def _params(kernel_size, stride, dilation, is_causal, scale) -> NAParams:
    return NAParams(tuple(kernel_size), tuple(stride), tuple(dilation), tuple(is_causal), scale)


def _implementation(name: str, query: torch.Tensor, params: NAParams) -> Backend:
    """Backend ``name``'s functions for a call, or the dense path when every window is the whole
    input (:func:`~nat.ops.spec.covers_input`): then a batched-GEMM forward wins on every
    device, so this is decided here, once, for every backend (``cpu`` keeps its own backward)."""
    spatial = tuple(query.shape[1:-2])
    if covers_input(spatial, params):
        tokens = math.prod(spatial)
        if name == "cpu" and tokens**2 <= _KERNEL_BACKWARD_MAX_PAIRS:
            if tokens <= _KERNEL_FORWARD_MAX_TOKENS and _kernel_forward_wins(query):
                return _BACKENDS[name]
            return _DENSE_CPU
        return _DENSE
    return _BACKENDS[name]


def _kernel_forward_wins(query: torch.Tensor) -> bool:
    """Whether a small covering call's forward should run in the fused CPU kernel rather than as
    batched GEMMs (:data:`_KERNEL_FORWARD_MAX_TOKENS`)."""
    if query.dtype in _HALF_TYPES:
        return True
    return (
        query.dtype == torch.float32
        and query.shape[-1] in cpu.VECTOR_HEAD_DIMS
        and cpu.vector_lanes() == 8
    )


def _packed_backward_wins(qkv: torch.Tensor) -> bool:
    """Whether the CPU kernel should write a packed call's q/k/v gradient in place
    (:func:`na_packed_op`): in bfloat16 and float16, and in float32 where the kernel has 8 lanes
    (AVX2: 18-20% off the float32 backward at NAT-Tiny's level 1, stack included). With 16
    (AVX-512) its float32 sums were faster in its own head-major layout, stack and all (both
    measured, ``docs/benchmarks.md``)."""
    if qkv.dtype in _HALF_TYPES:
        return True
    return qkv.dtype == torch.float32 and cpu.vector_lanes() == 8


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off for ``device_type``: ``torch.autocast(enabled=False)`` where it is on, and
    nothing where it is off already (a backward, mostly), which saves entering and leaving it."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _backend_forward(name, query, key, value, rpb, params, need_lse):
    """Backend ``name``'s forward for the call, outside autocast (the inputs are already in its
    dtype): what ``nat::na_forward`` runs, and eager calls that skip the op."""
    with _autocast_off(query.device.type):
        return _implementation(name, query, params).forward(
            query, key, value, rpb, params, need_lse
        )


def _forward_saving(impl, query, key, value, rpb, params):
    """Backend ``impl``'s forward for autograd: output, log-sum-exp, and what its backward reuses
    (:attr:`Backend.forward_saving`; an empty tensor for a backend that keeps nothing)."""
    with _autocast_off(query.device.type):
        if impl.forward_saving is not None:
            return impl.forward_saving(query, key, value, rpb, params)
        out, lse = impl.forward(query, key, value, rpb, params, True)
    return out, lse, lse.new_empty(0, dtype=torch.float32)


def _backend_forward_saving(name, query, key, value, rpb, params):
    """:func:`_forward_saving` for backend ``name``'s implementation of the call."""
    return _forward_saving(_implementation(name, query, params), query, key, value, rpb, params)


def _saved_fake(name, query, value, params) -> tuple[int, ...]:
    """The shape of what :func:`_backend_forward_saving` keeps, for fake tensors."""
    impl = _implementation(name, query, params)
    return (0,) if impl.saved_shape is None else impl.saved_shape(query, value, params)


def _extra(grad_lse, saved) -> dict:
    """The optional keywords of a backend's backward: only what is there."""
    # Only a caller that asked for the log-sum-exp (return_lse) can send a gradient into it, and
    # only backends with a forward_saving keep anything.
    extra = {} if grad_lse is None else {"grad_lse": grad_lse}
    if saved is not None and saved.numel():
        extra["saved"] = saved
    return extra


def _backend_backward(
    name, grad_out, query, key, value, rpb, out, lse, params, grad_lse, saved=None
):
    """Backend ``name``'s four gradients, outside autocast (``nat::na_backward``'s body)."""
    extra = _extra(grad_lse, saved)
    with _autocast_off(query.device.type):
        return _implementation(name, query, params).backward(
            grad_out, query, key, value, rpb, out, lse, params, **extra
        )


def _backend_backward_packed(name, grad_out, qkv, rpb, out, lse, params, grad_lse, saved=None):
    """The packed q/k/v's gradient (contiguous, ``qkv``'s shape) and rpb's (``None`` without
    rpb): the backend's packed backward, or its three gradients stacked."""
    query, key, value = qkv.unbind(-3)
    impl = _implementation(name, query, params)
    if impl.backward_packed is None:
        dq, dk, dv, drpb = _backend_backward(
            name, grad_out, query, key, value, rpb, out, lse, params, grad_lse, saved
        )
        return torch.stack((dq, dk, dv), dim=-3), drpb
    return _backward_packed(impl, grad_out, qkv, rpb, out, lse, params, grad_lse, saved)


def _backward_packed(impl, grad_out, qkv, rpb, out, lse, params, grad_lse, saved):
    """Backend ``impl``'s packed backward (it has one), outside autocast."""
    with _autocast_off(qkv.device.type):
        return impl.backward_packed(grad_out, qkv, rpb, out, lse, params, **_extra(grad_lse, saved))


def _incoming(grad_out, grad_lse, out):
    """The gradients autograd hands a backward, as the backends take them: contiguous, and zeros
    for an output nobody used (``None`` stays ``None`` for the log-sum-exp: backends skip it)."""
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
    return grad_out, None if grad_lse is None else grad_lse.contiguous()


@torch.library.custom_op("nat::na_forward", mutates_args=())
def _na_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    kernel_size: list[int],
    stride: list[int],
    dilation: list[int],
    is_causal: list[bool],
    scale: float,
    backend: str,
    need_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    params = _params(kernel_size, stride, dilation, is_causal, scale)
    out, lse = _backend_forward(backend, query, key, value, rpb, params, need_lse)
    # Without autograd the log-sum-exp is not needed: an empty tensor stands for it.
    return out, lse if need_lse else lse.new_empty(0)


@torch.library.custom_op("nat::na_packed_forward", mutates_args=())
def _na_packed_forward(
    qkv: torch.Tensor,
    rpb: torch.Tensor | None,
    kernel_size: list[int],
    stride: list[int],
    dilation: list[int],
    is_causal: list[bool],
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``nat::na_forward`` on q, k, v packed as ``[B, *spatial, 3, heads, D]``, for autograd: the
    output, the log-sum-exp and what the backend keeps for its backward (``saved``, float32,
    often empty: :attr:`Backend.forward_saving`)."""
    query, key, value = qkv.unbind(-3)
    params = _params(kernel_size, stride, dilation, is_causal, scale)
    return _backend_forward_saving(backend, query, key, value, rpb, params)


@_na_packed_forward.register_fake
def _na_packed_forward_fake(qkv, rpb, kernel_size, stride, dilation, is_causal, scale, backend):
    query = qkv.select(-3, 0)
    n = math.prod(query.shape[1:-2])
    lse = query.new_empty(
        (query.shape[0], query.shape[-2], n), dtype=torch.promote_types(query.dtype, torch.float32)
    )
    params = _params(kernel_size, stride, dilation, is_causal, scale)
    saved = query.new_empty(_saved_fake(backend, query, query, params), dtype=torch.float32)
    return query.new_empty(query.shape), lse, saved


@_na_forward.register_fake
def _na_forward_fake(
    query, key, value, rpb, kernel_size, stride, dilation, is_causal, scale, backend, need_lse
):
    n = math.prod(query.shape[1:-2])
    shape = (query.shape[0], query.shape[-2], n) if need_lse else (0,)
    lse = query.new_empty(shape, dtype=torch.promote_types(query.dtype, torch.float32))
    return value.new_empty((*query.shape[:-1], value.shape[-1])), lse


@torch.library.custom_op("nat::na_backward", mutates_args=())
def _na_backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    kernel_size: list[int],
    stride: list[int],
    dilation: list[int],
    is_causal: list[bool],
    scale: float,
    backend: str,
    grad_lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    params = _params(kernel_size, stride, dilation, is_causal, scale)
    dq, dk, dv, drpb = _backend_backward(
        backend, grad_out, query, key, value, rpb, out, lse, params, grad_lse
    )
    # Gradients are head-major strided views (see torch_backend.heads_last). Custom ops cannot
    # return None: an empty tensor stands for "no rpb".
    return dq, dk, dv, query.new_empty(0) if drpb is None else drpb


@_na_backward.register_fake
def _na_backward_fake(grad_out, query, key, value, rpb, out, lse, *args):
    def head_major(t: torch.Tensor) -> torch.Tensor:
        return t.new_empty((t.shape[0], t.shape[-2], *t.shape[1:-2], t.shape[-1])).movedim(1, -2)

    drpb = query.new_empty(0) if rpb is None else rpb.new_empty(rpb.shape)
    return (
        head_major(query),
        head_major(key),
        head_major(value),
        drpb,
    )


def _setup_context(ctx, inputs, output):
    query, key, value, rpb, *window, _need_lse = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, rpb, out, lse)
    ctx.window = window
    ctx.has_rpb = rpb is not None
    # An output the caller never used gets None, not zeros: without return_lse, no gradient
    # reaches the log-sum-exp and the backends skip it.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, grad_lse):
    query, key, value, rpb, out, lse = ctx.saved_tensors
    grad_out, grad_lse = _incoming(grad_out, grad_lse, out)
    dq, dk, dv, drpb = _na_backward(
        grad_out, query, key, value, rpb, out, lse, *ctx.window, grad_lse
    )
    return dq, dk, dv, drpb if ctx.has_rpb else None, None, None, None, None, None, None, None


_na_forward.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("nat::na_packed_backward", mutates_args=())
def _na_packed_backward(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    rpb: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    kernel_size: list[int],
    stride: list[int],
    dilation: list[int],
    is_causal: list[bool],
    scale: float,
    backend: str,
    grad_lse: torch.Tensor | None = None,
    saved: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of the packed q/k/v (contiguous, ``qkv``'s shape) and rpb's; ``saved`` is what
    ``nat::na_packed_forward`` kept."""
    params = _params(kernel_size, stride, dilation, is_causal, scale)
    dqkv, drpb = _backend_backward_packed(
        backend, grad_out, qkv, rpb, out, lse, params, grad_lse, saved
    )
    return dqkv, qkv.new_empty(0) if drpb is None else drpb


@_na_packed_backward.register_fake
def _na_packed_backward_fake(grad_out, qkv, rpb, *args):
    drpb = qkv.new_empty(0) if rpb is None else rpb.new_empty(rpb.shape)
    return qkv.new_empty(qkv.shape), drpb


def _packed_setup_context(ctx, inputs, output):
    qkv, rpb, *window = inputs
    ctx.save_for_backward(qkv, rpb, *output)
    ctx.window = window
    ctx.has_rpb = rpb is not None
    ctx.set_materialize_grads(False)


def _packed_backward(ctx, grad_out, grad_lse, _grad_saved):
    qkv, rpb, out, lse, saved = ctx.saved_tensors
    grad_out, grad_lse = _incoming(grad_out, grad_lse, out)
    dqkv, drpb = _na_packed_backward(grad_out, qkv, rpb, out, lse, *ctx.window, grad_lse, saved)
    return dqkv, drpb if ctx.has_rpb else None, None, None, None, None, None, None


_na_packed_forward.register_autograd(_packed_backward, setup_context=_packed_setup_context)


class _EagerNA(torch.autograd.Function):
    """``nat::na_forward``'s autograd for plain eager calls: the same backend functions, called
    without the custom op's dispatch (about 0.1 ms a call each way). Wherever anything records
    the op (``torch.compile``, export, FlopCounterMode, fake tensors, torch.func transforms) the
    registered op runs.

    ``forward`` takes ``ctx`` itself: with a separate ``setup_context``, ``apply`` binds its
    arguments through ``inspect`` on every call (about 20 us of a call's Python).
    """

    @staticmethod
    def forward(ctx, query, key, value, rpb, params, name):
        output = _backend_forward_saving(name, query, key, value, rpb, params)
        ctx.save_for_backward(query, key, value, rpb, *output)
        ctx.mark_non_differentiable(output[2])
        ctx.params, ctx.name = params, name
        ctx.set_materialize_grads(False)
        return output

    @staticmethod
    def backward(ctx, grad_out, grad_lse, _grad_saved):
        query, key, value, rpb, out, lse, saved = ctx.saved_tensors
        grad_out, grad_lse = _incoming(grad_out, grad_lse, out)
        dq, dk, dv, drpb = _backend_backward(
            ctx.name, grad_out, query, key, value, rpb, out, lse, ctx.params, grad_lse, saved
        )
        return dq, dk, dv, drpb, None, None


class _EagerPackedNA(torch.autograd.Function):
    """``nat::na_packed_forward``'s autograd for plain eager calls (see :class:`_EagerNA`), on a
    backend implementation ``impl`` with a packed backward, resolved once for both passes."""

    @staticmethod
    def forward(ctx, qkv, rpb, params, impl):
        output = _forward_saving(impl, *qkv.unbind(-3), rpb, params)
        ctx.save_for_backward(qkv, rpb, *output)
        ctx.mark_non_differentiable(output[2])
        ctx.params, ctx.impl = params, impl
        ctx.set_materialize_grads(False)
        return output

    @staticmethod
    def backward(ctx, grad_out, grad_lse, _grad_saved):
        qkv, rpb, out, lse, saved = ctx.saved_tensors
        grad_out, grad_lse = _incoming(grad_out, grad_lse, out)
        dqkv, drpb = _backward_packed(
            ctx.impl, grad_out, qkv, rpb, out, lse, ctx.params, grad_lse, saved
        )
        return dqkv, drpb, None, None


def na_flops(query_shape, value_shape, kernel_size) -> int:
    """The spec's cost: ``2 * B * heads * N * prod(K) * (D + Dv)`` (QK and AV, 2 per MAC)."""
    batch, heads, dim = query_shape[0], query_shape[-2], query_shape[-1]
    n = math.prod(query_shape[1:-2])
    return 2 * batch * heads * n * math.prod(kernel_size) * (dim + value_shape[-1])


@register_flop_formula(torch.ops.nat.na_forward)
def _na_forward_flops(query_shape, key_shape, value_shape, rpb_shape, kernel_size, *args, **kwargs):
    return na_flops(query_shape, value_shape, kernel_size)


@register_flop_formula(torch.ops.nat.na_packed_forward)
def _na_packed_forward_flops(qkv_shape, rpb_shape, kernel_size, *args, **kwargs):
    query_shape = (*qkv_shape[:-3], *qkv_shape[-2:])
    return na_flops(query_shape, query_shape, kernel_size)


@register_flop_formula(torch.ops.nat.na_packed_backward)
def _na_packed_backward_flops(
    grad_shape, qkv_shape, rpb_shape, out_shape_, lse_shape, kernel_size, *args, **kwargs
):
    # As for nat::na_backward: twice the forward's products.
    return 2 * _na_packed_forward_flops(qkv_shape, rpb_shape, kernel_size)


@register_flop_formula(torch.ops.nat.na_backward)
def _na_backward_flops(
    grad_shape,
    query_shape,
    key_shape,
    value_shape,
    rpb_shape,
    out_shape_,
    lse_shape,
    kernel_size,
    *args,
    **kwargs,
):
    # dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q: twice the forward's products.
    return 2 * na_flops(query_shape, value_shape, kernel_size)


def _plain_eager() -> bool:
    """No compiler tracing, no dispatch mode (FlopCounterMode, fake tensors) and no torch.func
    transform (grad, vmap: they need the op's own autograd) is watching."""
    return (
        not torch.compiler.is_compiling()
        and torch.utils._python_dispatch._get_current_dispatch_mode() is None
        and torch._C._functorch.peek_interpreter_stack() is None
    )


def na_op(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    params: NAParams,
    backend: str | None = None,
    return_lse: bool = False,
    dropout: float = 0.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run validated inputs through the chosen backend (autocast applied like a matmul).

    Returns the output ``[B, *spatial, heads, Dv]``, and with ``return_lse`` also the
    log-sum-exp of each query's scores ``[B, *spatial, heads]`` (float32, float64 for float64
    inputs), differentiable like the output. ``dropout`` > 0 drops attention weights with that
    probability (training); only backends with :attr:`Backend.dropout` can, and an explicit
    ``backend`` without it raises.
    """
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
        rpb = None if rpb is None else rpb.to(dtype)
    name = resolve_backend(backend, query.device, (query, key, value, rpb, params), dropout)
    return _run_resolved(query, key, value, rpb, params, name, return_lse, dropout)


def _run_resolved(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    params: NAParams,
    name: str,
    return_lse: bool = False,
    dropout: float = 0.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """:func:`na_op` once autocast's cast is applied and backend ``name`` resolved for the call."""
    device_type = query.device.type
    if dropout:
        if return_lse:
            raise ValueError(f"return_lse=True cannot be combined with attention dropout={dropout}")
        return _BACKENDS[name].dropout(query, key, value, rpb, params, dropout)
    if name == "reference":
        return reference.na_reference(query, key, value, params, rpb, return_lse=return_lse)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (query, key, value, rpb)
    )
    need_lse = needs_grad or return_lse
    if needs_grad and (differentiable := _implementation(name, query, params).autograd_forward):
        with torch.autocast(device_type, enabled=False):
            out, lse = differentiable(query, key, value, rpb, params)
        return (out, _lse_heads_last(lse, query)) if return_lse else out
    # q, k and v go in as they are (often strided slices of one qkv projection): the backends
    # read strided rows, which saves three copies per call.
    contiguous_rpb = None if rpb is None else rpb.contiguous()
    if _plain_eager():
        # Nothing records the op, so skip its dispatch (~0.1 ms a call each way). Inputs are
        # already in autocast's dtype; like the op, the backend runs without autocast.
        if needs_grad:
            out, lse, _ = _EagerNA.apply(query, key, value, contiguous_rpb, params, name)
        else:
            out, lse = _backend_forward(name, query, key, value, rpb, params, need_lse)
        return (out, _lse_heads_last(lse, query)) if return_lse else out
    out, lse = _na_forward(
        query,
        key,
        value,
        contiguous_rpb,
        list(params.kernel_size),
        list(params.stride),
        list(params.dilation),
        list(params.is_causal),
        params.scale,
        name,
        need_lse,
    )
    return (out, _lse_heads_last(lse, query)) if return_lse else out


def na_packed_op(
    qkv: torch.Tensor,
    rpb: torch.Tensor | None,
    params: NAParams,
    backend: str | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """:func:`na_op` on q, k, v packed as ``[B, *spatial, 3, heads, D]`` (a qkv projection).

    The same output. Under autograd, on a backend with :attr:`Backend.backward_packed` (``cpu``),
    where :func:`_packed_backward_wins`, the packed input's gradient comes back as one tensor,
    which the kernel writes in place: the three that ``qkv.unbind`` would give autograd to stack
    (a copy of all three) are never made. Every other call goes to :func:`na_op` as three tensors.
    """
    if qkv.dim() < 4 or qkv.shape[-3] != 3:
        raise ValueError(
            f"qkv has shape {tuple(qkv.shape)}; expected [batch, *spatial, 3, heads, head_dim]"
        )
    needs_grad = torch.is_grad_enabled() and (
        qkv.requires_grad or (rpb is not None and rpb.requires_grad)
    )
    if not needs_grad or dropout:
        return na_op(*qkv.unbind(-3), rpb, params, backend, dropout=dropout)
    device_type = qkv.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        qkv = qkv.to(dtype)
        rpb = None if rpb is None else rpb.to(dtype)
    query, key, value = qkv.unbind(-3)
    name = resolve_backend(backend, qkv.device, (query, key, value, rpb, params))
    impl = None if name == "reference" else _implementation(name, query, params)
    if impl is None or impl.backward_packed is None or not _packed_backward_wins(qkv):
        return _run_resolved(query, key, value, rpb, params, name)
    rpb = None if rpb is None else rpb.contiguous()
    if _plain_eager():
        return _EagerPackedNA.apply(qkv, rpb, params, impl)[0]
    out, *_ = _na_packed_forward(
        qkv,
        rpb,
        list(params.kernel_size),
        list(params.stride),
        list(params.dilation),
        list(params.is_causal),
        params.scale,
        name,
    )
    return out


def _lse_heads_last(lse: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The backends' ``[B, heads, N]`` log-sum-exp in NATTEN's layout ``[B, *spatial, heads]``."""
    return lse.transpose(1, 2).reshape(query.shape[:-1])


register_backend(
    "cpu",
    cpu.na_forward,
    cpu.na_backward,
    devices=("cpu",),
    is_available=cpu.is_available,
    priority=10,
    backward_packed=cpu.na_backward_packed,
    forward_saving=cpu.na_forward_saving,
    saved_shape=cpu.saved_shape,
)
register_backend(
    "torch",
    torch_backend.na_forward,
    torch_backend.na_backward,
    devices=("cpu", "cuda", "mps", "xpu"),
    priority=0,
    dropout=torch_backend.na_unfused,
)
register_backend(
    "triton",
    triton_backend.na_forward,
    triton_backend.na_backward,
    devices=("cuda",),
    is_available=triton_backend.is_available,
    priority=20,
    can_run=triton_backend.can_run,
)
register_backend(
    "flex",
    flex.na_forward,
    flex.na_backward,
    devices=("cuda",),
    priority=5,
    can_run=flex.can_run,
    autograd_forward=flex.na_forward_autograd,
)
_DENSE = Backend(
    torch_backend.dense_forward,
    torch_backend.dense_backward,
    devices=(),
    is_available=lambda: True,
    priority=0,
    can_run=lambda *args: None,
    dropout=None,
)
"""Batched GEMMs over the whole input, for calls every window covers (any backend)."""
_DENSE_CPU = _DENSE._replace(backward=cpu.na_backward, backward_packed=cpu.na_backward_packed)
"""The dense forward with the fused CPU kernel's backward, for the ``cpu`` backend: measured 1.2-4x
faster than the batched-GEMM backward (which recomputes the probabilities) at every covering size
tried, from NAT's 7 x 7 level to 1024 tokens (``docs/benchmarks.md``)."""
_KERNEL_FORWARD_MAX_TOKENS = 64
"""bf16/fp16 calls the window covers, up to this many tokens, take the fused CPU kernel's forward
too: 0.49-0.98x the dense forward's time at 25-63 tokens (NAT-Tiny's 7 x 7 level: 0.81x in
bf16, 0.88x in fp16), level at 81 and 121, 1.1-1.3x at 169 (2 threads, ``docs/benchmarks.md``).
float32 keeps the dense forward where the kernel has AVX-512 (1.07x faster at 7 x 7 on Sapphire
Rapids); where it has 8-lane vectors (AVX2), float32 calls with a vector-path head dim take the
kernel's forward too: 0.65x the dense forward's time at 7 x 7, 0.78x at 9 x 9, level at 11 x 11
and 13 x 13 (Zen 3 EPYC, 2 threads)."""
_HALF_TYPES = (torch.bfloat16, torch.float16)
_KERNEL_BACKWARD_MAX_PAIRS = 2**22
"""Above this many (query, key) pairs the kernel's neighbour tables (9 bytes a pair) would take
more memory than the GEMMs' score matrix is worth: the batched-GEMM backward runs instead."""
