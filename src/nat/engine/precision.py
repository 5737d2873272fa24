"""Mixed precision: which ``amp`` setting a device gets, and the autocast context for it."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["AMP_MODES", "autocast", "resolve_amp"]

AMP_MODES = ("auto", "none", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(amp: str, device: torch.device) -> str:
    """``amp`` as ``none``/``bf16``/``fp16`` for ``device``: ``auto`` is bf16 on CUDA devices that
    support it, else fp16 on CUDA, else none; fp16 needs CUDA."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp={amp!r} must be one of {', '.join(AMP_MODES)}")
    if amp == "auto":
        if device.type != "cuda":
            return "none"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp=fp16 needs a CUDA device (got {device}); use bf16 on CPU")
    return amp


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision context: ``amp`` is ``none``, ``bf16`` or ``fp16`` (checked by
    :func:`resolve_amp`)."""
    amp = resolve_amp(amp, device)
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[amp])
