"""Test-time inference: class probabilities at the image's own resolution from one or several
rescaled copies (and their mirror images), each run whole or in sliding windows.

mmsegmentation's protocol: each copy fits ``scale`` (long, short sides) times a ratio, keeping its
aspect ratio; its logits are resized back to the image, turned into probabilities and averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...data.segmentation_transforms import rescale_size
from ...engine import autocast

__all__ = ["MODES", "MULTI_SCALE_RATIOS", "EvalProtocol", "infer"]

MODES = ("whole", "slide")
MULTI_SCALE_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass(frozen=True)
class EvalProtocol:
    """How an image is evaluated. ``scale`` ``None`` keeps the image's size (times the ratios)."""

    scale: tuple[int, int] | None = (2048, 512)
    ratios: tuple[float, ...] = (1.0,)
    flip: bool = False
    mode: str = "whole"
    crop_size: int = 512
    stride: int = 341

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} must be one of {', '.join(MODES)}")
        if not self.ratios or any(not r > 0 for r in self.ratios):
            raise ValueError(f"ratios={list(self.ratios)} must be one or more numbers > 0")
        if self.mode == "slide" and not 0 < self.stride <= self.crop_size:
            raise ValueError(f"stride={self.stride} must be in 1..crop_size={self.crop_size}")


@torch.no_grad()
def infer(
    model: nn.Module, image: torch.Tensor, protocol: EvalProtocol, *, amp: str = "none"
) -> torch.Tensor:
    """Class probabilities ``[B, classes, H, W]`` for normalised images ``[B, 3, H, W]`` (the
    model in eval mode returns logits ``[B, classes, h, w]`` for ``[B, 3, h, w]``)."""
    height, width = image.shape[-2:]
    total = None
    for ratio in protocol.ratios:
        size = (
            rescale_size(height, width, protocol.scale, ratio)
            if protocol.scale is not None
            else (max(1, round(height * ratio)), max(1, round(width * ratio)))
        )
        scaled = image if size == (height, width) else _resize(image, size)
        for flipped in (False, True) if protocol.flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            with autocast(image.device, amp):
                logits = (
                    _whole(model, x) if protocol.mode == "whole" else _slide(model, x, protocol)
                )
            logits = logits.float().flip(-1) if flipped else logits.float()
            probs = _resize(logits, (height, width)).softmax(dim=1)
            total = probs if total is None else total + probs
    return total / (len(protocol.ratios) * (2 if protocol.flip else 1))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _whole(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _slide(model: nn.Module, x: torch.Tensor, protocol: EvalProtocol) -> torch.Tensor:
    """Windows of ``crop_size`` every ``stride`` pixels (the last flush with the border); the
    logits of overlapping windows are averaged."""
    height, width = x.shape[-2:]
    crop, stride = protocol.crop_size, protocol.stride
    logits = count = None
    for top in _starts(height, crop, stride):
        for left in _starts(width, crop, stride):
            window = x[..., top : top + crop, left : left + crop]
            out = model(window).float()
            if logits is None:
                logits = x.new_zeros((x.shape[0], out.shape[1], height, width), dtype=torch.float32)
                count = x.new_zeros((1, 1, height, width), dtype=torch.float32)
            logits[..., top : top + crop, left : left + crop] += out
            count[..., top : top + crop, left : left + crop] += 1
    return logits / count


def _starts(length: int, crop: int, stride: int) -> Sequence[int]:
    if length <= crop:
        return [0]
    steps = -(-(length - crop) // stride)
    return [min(i * stride, length - crop) for i in range(steps + 1)]
