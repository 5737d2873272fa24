"""Optimizer options every task shares."""

from __future__ import annotations

from torch import nn

FUSED_OPTIMIZERS = ("adam", "adamw")
"""timm optimizer names that build PyTorch's ``Adam``/``AdamW``, which have fused kernels."""

FUSED_DEVICES = ("cpu", "cuda")


def fused_kwargs(model: nn.Module, opt: str) -> dict[str, bool]:
    """``{"fused": True}`` for the optimizer ``opt`` when PyTorch has a fused kernel for it and
    every trainable parameter of ``model`` is a floating-point tensor on a device it runs on;
    ``{}`` otherwise.

    The fused kernel updates each parameter in one pass instead of a dozen elementwise ops per
    tensor: on a 2-core Zen 3 EPYC, an AdamW step of NAT-Tiny (409 tensors) took 24 ms instead of
    100 ms, Swin-T's (173 tensors) 23 ms instead of 81 ms (``docs/benchmarks.md``). Same update,
    summed in a different order: results agree to rounding, not bit for bit.
    """
    if not isinstance(opt, str):
        raise TypeError(f"opt={opt!r}: expected an optimizer name (a str, such as 'adamw')")
    if opt.lower() not in FUSED_OPTIMIZERS:
        return {}
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or any(
        p.device.type not in FUSED_DEVICES or not p.is_floating_point() for p in params
    ):
        return {}
    return {"fused": True}
