"""``Linear``: ``nn.Linear`` whose float32 CPU products can run in oneDNN instead of the BLAS.

PyTorch multiplies float32 matrices on the CPU with its BLAS (MKL in the official builds). On an
AMD EPYC Zen 5, MKL ran float32 products at 190-240 GFLOP/s, as fast as with
``MKL_ENABLE_INSTRUCTIONS=AVX2`` (asking for AVX512 changed nothing), while oneDNN's matmul
(``torch.ops.mkldnn._linear_pointwise``, which Inductor also calls) ran the same products with
AVX-512 at 460-530 (``docs/benchmarks.md``). bfloat16 and float16 products already run in oneDNN.

:func:`linear` runs ``x @ weight.T + bias`` as the op ``nat::linear``, with its fake, autograd
and FLOP formula next to it, when all of these hold; otherwise it is ``F.linear``:

- the backend (:func:`cpu_linear_backend`) is ``onednn``;
- the input, weight and bias are float32 CPU tensors, and no CPU autocast is on (autocast runs
  the product in bf16/fp16, in oneDNN already);
- nothing is exporting or tracing the model (``torch.export``, ``torch.onnx``, ``torch.jit``):
  an exported graph keeps the standard ``linear`` so that it runs anywhere.

The products are the same; only the summation order inside them differs, so the results agree
to float32 rounding, not bit for bit. Under ``torch.compile`` the op stays one extern call.

With the same backend, a bfloat16 product in eager mode (under CPU autocast to bfloat16, or of
bfloat16 tensors) runs as oneDNN's matmul with the bias added inside it, where ``F.linear``
first copies the bias into its output and then accumulates into it; its weight gradient takes
whichever of ``grad.T @ x`` and ``(x.T @ grad).T`` oneDNN runs faster at the shape. The results
are autocast's to the bit (``tests/nn/test_linear.py``); NAT-Tiny's bf16 training step on a Zen 5
EPYC took 0.5-0.7% less time in two same-process A/Bs (``docs/benchmarks.md``, round twenty).
Compiled, exported, traced and FLOP-counted calls, and torch.func transforms, keep ``F.linear``.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

__all__ = [
    "CPU_LINEAR_BACKENDS",
    "CPU_LINEAR_VARIABLE",
    "Linear",
    "cpu_linear_backend",
    "linear",
    "set_cpu_linear_backend",
    "use_nat_linear",
]

CPU_LINEAR_BACKENDS = ("auto", "onednn", "blas")
"""``onednn``: float32 CPU products through ``nat::linear``; ``blas``: PyTorch's own
(``F.linear``); ``auto``: ``onednn`` where :func:`onednn_preferred`, ``blas`` elsewhere."""

CPU_LINEAR_VARIABLE = "NAT_CPU_LINEAR"
"""Environment variable naming the backend (one of :data:`CPU_LINEAR_BACKENDS`); unset means
``auto``. :func:`set_cpu_linear_backend` overrides it."""


def _check_backend(name: object, source: str) -> str:
    if name not in CPU_LINEAR_BACKENDS:
        raise ValueError(f"{source}={name!r}; expected one of {', '.join(CPU_LINEAR_BACKENDS)}")
    return name


def onednn_available() -> bool:
    """Whether this PyTorch has oneDNN and its linear op."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_preferred() -> bool:
    """``auto``'s choice: oneDNN where PyTorch's BLAS is MKL, the CPU is AMD's and has AVX-512.

    That is where MKL's float32 products ran at its AVX2 rate while oneDNN's used AVX-512: 2.2x
    faster on a Zen 5 EPYC. On a Zen 3 EPYC (AVX2 only) oneDNN's were slower than MKL's (508
    against 472 ms over NAT-Tiny's linears, ``docs/benchmarks.md``, round thirteen). On the
    Sapphire Rapids Xeon of round ten MKL read 311-320 GFLOP/s on two cores, an AVX-512 rate;
    oneDNN was not compared there, so Intel CPUs keep the BLAS.
    """
    from ..ops.cpu import _cpu_vendor

    return (
        onednn_available()
        and torch.backends.mkl.is_available()
        and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
        and _cpu_vendor() == "AuthenticAMD"
    )


def _resolve(choice: str | None) -> str:
    if choice is None:
        variable = os.environ.get(CPU_LINEAR_VARIABLE, "").strip() or "auto"
        choice = _check_backend(variable, CPU_LINEAR_VARIABLE)
    if choice == "auto":
        return "onednn" if onednn_preferred() else "blas"
    if choice == "onednn" and not onednn_available():
        raise RuntimeError(
            "the onednn CPU linear was asked for, but this PyTorch has no oneDNN "
            "(torch.backends.mkldnn.is_available() is False): use auto or blas"
        )
    return choice


_backend: str | None = None
"""The resolved backend, set at import and by :func:`set_cpu_linear_backend`: a plain global, so
that ``torch.compile`` reads it as a constant (with a guard) instead of tracing the resolution.
``None`` only while ``NAT_CPU_LINEAR`` holds a bad value (the first linear then raises)."""


def set_cpu_linear_backend(backend: str | None) -> None:
    """Choose the float32 CPU linear for this process: ``auto``, ``onednn`` or ``blas``;
    ``None`` reads ``NAT_CPU_LINEAR`` again (it is read once, at import, otherwise)."""
    global _backend
    _backend = _resolve(None if backend is None else _check_backend(backend, "backend"))


def cpu_linear_backend() -> str:
    """The backend float32 CPU linears run on now, resolved: ``onednn`` or ``blas``.

    ``onednn`` only where PyTorch has it (:func:`onednn_available`); asked for where it has not,
    :func:`set_cpu_linear_backend` (or the first linear, for ``NAT_CPU_LINEAR``) raises.
    """
    if _backend is None:
        set_cpu_linear_backend(None)
    return _backend


with contextlib.suppress(ValueError, RuntimeError):
    set_cpu_linear_backend(None)


@torch.library.custom_op("nat::linear", mutates_args=())
def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` in oneDNN: ``[..., K] x [N, K] -> [..., N]``."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@_linear.register_fake
def _linear_fake(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("nat::linear_weight_grad", mutates_args=())
def _linear_weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``grad.T @ x`` over all leading axes: ``[..., N], [..., K] -> [N, K]`` in oneDNN.

    oneDNN ran this product fastest with the longer of N and K as the output's rows (measured at
    NAT-Tiny's shapes: 2.97 against 5.44 ms at ``[25088, 192]^T x [25088, 64]``), so the wider
    case computes ``x.T @ grad`` and transposes the small result.
    """
    grad, x = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
    pointwise = torch.ops.mkldnn._linear_pointwise
    if grad.shape[1] >= x.shape[1]:
        return pointwise(x.t(), grad.t(), None, "none", [], "").t().contiguous()
    return pointwise(grad.t(), x.t(), None, "none", [], "")


@_linear_weight_grad.register_fake
def _linear_weight_grad_fake(grad, x):
    return grad.new_empty((grad.shape[-1], x.shape[-1]))


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(
        x if ctx.needs_input_grad[1] else None, weight if ctx.needs_input_grad[0] else None
    )
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad = grad.contiguous()
    dx = _linear(grad, weight.t(), None) if ctx.needs_input_grad[0] else None
    dw = _linear_weight_grad(grad, x) if ctx.needs_input_grad[1] else None
    needs_bias = ctx.has_bias and ctx.needs_input_grad[2]
    db = grad.reshape(-1, grad.shape[-1]).sum(0) if needs_bias else None
    return dx, dw, db


_linear.register_autograd(_backward, setup_context=_setup_context)


def _weight_grad_setup_context(ctx, inputs, output):
    grad, x = inputs
    ctx.save_for_backward(
        x if ctx.needs_input_grad[0] else None, grad if ctx.needs_input_grad[1] else None
    )


def _weight_grad_backward(ctx, outer):
    # dW = grad^T x, so d(grad) = x outer^T and d(x) = grad outer: double backward (a gradient
    # penalty, say) stays in nat::linear.
    x, grad = ctx.saved_tensors
    outer = outer.contiguous()
    d_grad = _linear(x, outer, None) if ctx.needs_input_grad[0] else None
    d_x = _linear(grad, outer.t(), None) if ctx.needs_input_grad[1] else None
    return d_grad, d_x


_linear_weight_grad.register_autograd(
    _weight_grad_backward, setup_context=_weight_grad_setup_context
)


@register_flop_formula(torch.ops.nat.linear)
def _linear_flops(x_shape, weight_shape, *args, **kwargs):
    return 2 * math.prod(x_shape[:-1]) * weight_shape[1] * weight_shape[0]


@register_flop_formula(torch.ops.nat.linear_weight_grad)
def _linear_weight_grad_flops(grad_shape, x_shape, *args, **kwargs):
    return 2 * math.prod(grad_shape[:-1]) * grad_shape[-1] * x_shape[-1]


def _exporting() -> bool:
    return (
        torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
    )


def _runs_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    # Cheapest first: bf16/autocast and non-CPU calls (every linear of a bf16 step) leave before
    # the export probes, which cost about a microsecond.
    if cpu_linear_backend() != "onednn" or isinstance(x, torch.fx.Proxy):
        return False
    if torch.is_autocast_enabled("cpu") or x.device.type != "cpu" or weight.device.type != "cpu":
        return False
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if bias is not None and (bias.dtype != torch.float32 or bias.device.type != "cpu"):
        return False
    # Before the shape tests, which would warn under torch.jit.trace.
    if _exporting():
        return False
    # Shapes F.linear would refuse go to it, for its error.
    if weight.dim() != 2 or x.dim() < 2 or x.shape[-1] != weight.shape[1]:
        return False
    return x.numel() > 0 and weight.numel() > 0


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


_MANY_ROWS = 4096
"""Rows (tokens) from which :class:`_BFloat16Linear`'s weight gradient may take the transposed
orientation: NAT-Tiny's levels 1 and 2 at batch 8 have 25088 and 6272, levels 3 and 4 1568 and
392."""


class _BFloat16Linear(torch.autograd.Function):
    """``x @ weight.T + bias`` of bfloat16 tensors in oneDNN, bias inside the product (module
    docstring). The backward is made of differentiable ops, so double backward works.

    ``forward`` takes ``ctx`` itself: a separate ``setup_context`` makes ``apply`` bind its
    arguments through ``inspect`` on every call.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _pointwise(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        dx = torch.matmul(grad, weight) if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1]:
            inputs = x.reshape(-1, x.shape[-1])
            # With many rows, oneDNN ran this product faster with the wider of N and K as the
            # output's rows (bf16, 25088 rows, NAT-Tiny's level 1: grad.T @ x took 1.05 against
            # 1.20 ms with N = 192, K = 64; (x.T @ grad).T 1.08 against 1.47 with N = 64,
            # K = 192). The transposed result costs a layout copy later (AccumulateGrad keeps
            # the weight's layout), and with few rows grad.T @ x won either way: at 392 rows
            # (N = 512, K = 1536) 0.84-0.90 against 1.48-1.59 ms with the float32 cast and the
            # copy (docs/benchmarks.md, round twenty).
            wide = rows.shape[1] >= inputs.shape[1] or rows.shape[0] < _MANY_ROWS
            dw = rows.t() @ inputs if wide else (inputs.t() @ rows).t()
        db = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def _plain_eager() -> bool:
    """Nothing records the call: no compiler, export or trace, no dispatch mode (FlopCounterMode,
    fake tensors) and no torch.func transform."""
    return (
        not torch.compiler.is_compiling()
        and torch.utils._python_dispatch._get_current_dispatch_mode() is None
        and torch._C._functorch.peek_interpreter_stack() is None
        and not _exporting()
    )


_BF16 = torch.bfloat16


def _bfloat16_call(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``linear(x, weight, bias)`` is a bfloat16 CPU product for :class:`_BFloat16Linear`:
    under CPU autocast to bfloat16 (float32 or bfloat16 operands), or of bfloat16 operands."""
    if cpu_linear_backend() != "onednn" or isinstance(x, torch.fx.Proxy):
        return False
    if x.device.type != "cpu" or weight.device.type != "cpu":
        return False
    if bias is not None and bias.device.type != "cpu":
        return False
    dtypes = {x.dtype, weight.dtype} | ({bias.dtype} if bias is not None else set())
    if torch.is_autocast_enabled("cpu"):
        if torch.get_autocast_dtype("cpu") != _BF16 or not dtypes <= {torch.float32, _BF16}:
            return False
    elif dtypes != {_BF16}:
        return False
    if weight.dim() != 2 or x.dim() < 2 or x.shape[-1] != weight.shape[1]:
        return False
    return x.numel() > 0 and weight.numel() > 0 and _plain_eager()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, with float32 and bfloat16 CPU products in oneDNN where the backend says so
    (module docstring)."""
    if _runs_onednn(x, weight, bias):
        return _linear(x, weight, bias)
    if _bfloat16_call(x, weight, bias):
        # Cast as autocast would, outside the function: autograd takes the casts' gradients
        # back to float32 as it does for F.linear under autocast.
        x, weight = x.to(_BF16), weight.to(_BF16)
        bias = None if bias is None else bias.to(_BF16)
        # oneDNN's op has no autocast rule: it runs in the operands' bfloat16 as it is.
        if torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        ):
            return _BFloat16Linear.apply(x, weight, bias)
        return _pointwise(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and initialisation) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def use_nat_linear(model: nn.Module) -> nn.Module:
    """Replace every plain ``nn.Linear`` inside ``model`` by a :class:`Linear` holding the same
    parameters, buffers and hooks (the state dict is unchanged), in place; returns ``model``.

    For running another model (timm's Swin-T, say) with the linear NAT uses.
    """
    if type(model) is nn.Linear:
        raise TypeError("model is an nn.Linear itself; use_nat_linear replaces layers inside one")
    for name, child in list(model.named_children()):
        if type(child) is nn.Linear:
            new = Linear.__new__(Linear)
            new.__dict__.update(child.__dict__)
            setattr(model, name, new)
        else:
            use_nat_linear(child)
    return model
