"""``LayerNorm``: ``nn.LayerNorm`` with its CPU bfloat16 calls in one pass of the C++ kernel.

Under CPU autocast to bfloat16 a layer norm runs in its input's type: NAT's residual stream is
bfloat16 from the tokenizer's convolution on, so every norm of the model normalises bfloat16
rows with float32 weight and bias into bfloat16 (float32 inside). :class:`LayerNorm` computes
these in ``nat.ops.cpu``'s ``layer_norm_bf16``: each row's mean and variance in float32, the
affine normalisation in float32, the result rounded once to nearest even; its backward returns
the input's gradient in bfloat16 and float32 weight and bias gradients. On a Zen 5 EPYC (2
threads) it took 0.32 against ATen's 0.79 ms at NAT-Tiny's level 1 ([25088, 64] rows, batch 8),
and 0.25 against 0.62 backward (``docs/benchmarks.md``, round twenty). Float32 rows under CPU
autocast to bfloat16 (a model whose stream stays float32) come back as bfloat16 too, the cast a
linear after the norm would make (``nn.LayerNorm`` returns float32 there).

The values are ATen's to rounding: the kernel sums a row in another order, so about 1 element
in 40,000 lands on the other side of a bfloat16 rounding boundary: one bf16 ulp apart, or a few
where the affine step's terms cancel to a value near zero (0.002 at most at NAT-Tiny's level 1).
The float32 weight and bias gradients agree with float64's to 1e-5 (``tests/nn/test_norm.py``).

It takes this path for contiguous CPU rows whose width is a multiple of the kernel's vector
width, with float32 weight and bias of a 1-D ``normalized_shape``, in plain eager mode (no
compiler, export, trace, dispatch mode or torch.func transform): bfloat16 rows always, float32
rows under CPU autocast to bfloat16. Anywhere else it is ``nn.LayerNorm``. Double backward
(``create_graph=True``) recomputes the norm with differentiable ops.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from .linear import _plain_eager

__all__ = ["LayerNorm"]

_BF16 = torch.bfloat16


@functools.cache
def _kernel() -> tuple[ModuleType, int] | None:
    """The C++ build that runs bfloat16 calls and its vector width, or ``None`` if not built."""
    from ..ops import cpu

    if not cpu.is_available():
        return None
    module = cpu.module_for(_BF16)
    return None if module is None else (module, int(module.vector_lanes()))


class _LayerNormBFloat16(torch.autograd.Function):
    """The layer norm of float32 or bfloat16 rows ``[..., C]`` into bfloat16, in the C++ kernel.

    ``forward`` takes ``ctx`` itself (no ``setup_context``: ``apply`` then binds no arguments
    through ``inspect``).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        module, _ = _kernel()
        rows = x.view(-1, x.shape[-1])
        y, mean, rstd = module.layer_norm_bf16(rows, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.eps = eps
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph: the same gradients from differentiable ops.
            return (*_differentiable_grads(ctx, x, weight, bias, dy), None)
        module, _ = _kernel()
        width = x.shape[-1]
        dx, dw, db = module.layer_norm_bf16_backward(
            dy.contiguous().view(-1, width), x.view(-1, width), mean, rstd, weight
        )
        needs = ctx.needs_input_grad
        return (
            dx.view(x.shape) if needs[0] else None,
            dw if needs[1] else None,
            db if needs[2] else None,
            None,
        )


def _differentiable_grads(ctx, x, weight, bias, dy):
    inputs = (x, weight, bias)
    wanted = [t for t, needed in zip(inputs, ctx.needs_input_grad[:3], strict=True) if needed]
    with torch.autocast("cpu", enabled=False):
        y = F.layer_norm(x, (x.shape[-1],), weight, bias, ctx.eps)
        grads = iter(torch.autograd.grad(y, wanted, dy.to(y.dtype), create_graph=True))
    return tuple(next(grads) if needed else None for needed in ctx.needs_input_grad[:3])


def _bfloat16_rows(x: torch.Tensor, norm: nn.LayerNorm) -> bool:
    """Whether ``norm(x)`` takes the kernel's path (module docstring)."""
    if isinstance(x, torch.fx.Proxy) or x.device.type != "cpu":
        return False
    if x.dtype == torch.float32:
        if not torch.is_autocast_enabled("cpu") or torch.get_autocast_dtype("cpu") != _BF16:
            return False
    elif x.dtype != _BF16:
        return False
    weight, bias = norm.weight, norm.bias
    if weight is None or bias is None or len(norm.normalized_shape) != 1:
        return False
    if weight.dtype != torch.float32 or bias.dtype != torch.float32:
        return False
    if weight.device.type != "cpu" or bias.device.type != "cpu":
        return False
    if x.dim() < 1 or x.shape[-1] != norm.normalized_shape[0] or x.numel() == 0:
        return False
    if not (x.is_contiguous() and weight.is_contiguous() and bias.is_contiguous()):
        return False
    if not _plain_eager():
        return False
    kernel = _kernel()
    return kernel is not None and x.shape[-1] % kernel[1] == 0


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters, state dict and initialisation) whose CPU bfloat16 calls
    run in the C++ kernel (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _bfloat16_rows(x, self):
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad or bias.requires_grad
        ):
            return _LayerNormBFloat16.apply(x, weight, bias, self.eps)
        module, _ = _kernel()
        return module.layer_norm_bf16(x.view(-1, x.shape[-1]), weight, bias, self.eps)[0].view(
            x.shape
        )
