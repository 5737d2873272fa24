"""Parameters and GFLOPs of the detectors next to the paper's (``nat models --task detection``).

Counting allocates nothing: the detector is built on the ``meta`` device and run on fake
tensors. GFLOPs follow mmdetection's ``get_flops`` (the paper's numbers): one multiply-add is one
FLOP, at 1280 x 800, over mmdetection's ``forward_dummy`` path: backbone, FPN, RPN head, each box
head on 1000 RoIs and each mask head on 100; RoIAlign, NMS and the box decoding are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils.flop_counter import FlopCounterMode

from ...models import count_params
from .model import PAPER, Detector, Paper, create_detector

__all__ = ["DetectorSummary", "count_gflops", "detection_table", "format_detection_table"]

DUMMY_ROIS = 1000
DUMMY_MASK_ROIS = 100
INPUT_SIZE = (800, 1280)


@dataclass(frozen=True)
class DetectorSummary:
    architecture: str
    backbone: str
    params: int
    gflops: float | None
    paper: Paper | None


def _stages(model: Detector) -> list[nn.Module]:
    heads = model.roi_heads
    return list(heads.stages) if hasattr(heads, "stages") else [heads]


def _dummy_forward(model: Detector, x: torch.Tensor) -> None:
    features = model.backbone(x)
    model.rpn.head(list(features.values()))
    channels = model.backbone.out_channels
    for stage in _stages(model):
        stage.box_predictor(stage.box_head(x.new_empty(DUMMY_ROIS, channels, 7, 7)))
        stage.mask_predictor(stage.mask_head(x.new_empty(DUMMY_MASK_ROIS, channels, 14, 14)))


def count_gflops(model: Detector, size: Sequence[int] = INPUT_SIZE) -> float:
    """GFLOPs (multiply-adds) of ``model`` (may live on ``meta``) on one ``[3, *size]`` image."""
    with FakeTensorMode():
        tensors = {
            name: torch.empty(t.shape, dtype=t.dtype)
            for name, t in (*model.named_parameters(), *model.named_buffers())
        }
        x = torch.empty(1, 3, *size)
        with (
            FlopCounterMode(display=False) as counter,
            torch.no_grad(),
            _reparametrize_module(model, tensors),
        ):
            _dummy_forward(model.eval(), x)
    return counter.get_total_flops() / 2e9


def detection_table(
    rows: Sequence[tuple[str, str]] | None = None, *, gflops: bool = True
) -> list[DetectorSummary]:
    """One row per (architecture, backbone) of the paper (or ``rows``), 81 classes."""
    out = []
    for architecture, backbone in rows or list(PAPER):
        with torch.device("meta"):
            model = create_detector(architecture, backbone, 81)
        out.append(
            DetectorSummary(
                architecture,
                backbone,
                count_params(model),
                count_gflops(model) if gflops else None,
                PAPER.get((architecture, backbone)),
            )
        )
    return out


def format_detection_table(rows: Sequence[DetectorSummary]) -> str:
    header = ("architecture", "backbone", "params", "(paper)", "GFLOPs", "(paper)", "box/mask AP")
    lines = [header]
    for r in rows:
        p = r.paper
        lines.append(
            (
                r.architecture,
                r.backbone,
                f"{r.params / 1e6:.1f}M",
                f"{p.params_m:.0f}M" if p else "-",
                f"{r.gflops:.0f}" if r.gflops is not None else "-",
                f"{p.gflops:.0f}" if p else "-",
                f"{p.box_ap:.1f}/{p.mask_ap:.1f}" if p else "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    return "\n".join([text[0], "  ".join("-" * w for w in widths), *text[1:]])
