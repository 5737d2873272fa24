"""Parameters and MACs of UPerNet-NAT next to the paper's figures (ADE20K, 160k iterations).

Counted as :mod:`nat.models.summary` counts classifiers: built on the ``meta`` device, run on fake
tensors. Parameters include the auxiliary head (as mmsegmentation counts them); MACs are of the
inference path (no auxiliary head) on one 512 x 2048 image, the paper's "GFLOPs".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...models import count_gmacs, count_params
from .model import upernet

__all__ = ["PAPER", "PaperUPerNet", "SegmentationSummary", "format_table", "segmentation_table"]

INPUT_SIZE = (3, 512, 2048)


@dataclass(frozen=True)
class PaperUPerNet:
    params_m: float
    gflops: float
    miou: float
    miou_ms: float


PAPER: dict[str, PaperUPerNet] = {
    "nat_mini": PaperUPerNet(50, 900, 45.1, 46.4),
    "nat_tiny": PaperUPerNet(58, 934, 47.1, 48.4),
    "nat_small": PaperUPerNet(82, 1010, 48.0, 49.5),
    "nat_base": PaperUPerNet(123, 1137, 48.5, 49.7),
}


@dataclass(frozen=True)
class SegmentationSummary:
    backbone: str
    params: int
    gmacs: float | None
    paper: PaperUPerNet | None


def segmentation_table(
    backbones: Sequence[str] | None = None, *, gmacs: bool = True, num_classes: int = 150
) -> list[SegmentationSummary]:
    """One row per backbone (default: the paper's four), UPerNet with ``num_classes`` classes."""
    rows = []
    for backbone in backbones or list(PAPER):
        with torch.device("meta"):
            model = upernet(backbone, num_classes).eval()
        macs = count_gmacs(model, INPUT_SIZE)[0] if gmacs else None
        rows.append(SegmentationSummary(backbone, count_params(model), macs, PAPER.get(backbone)))
    return rows


def format_table(rows: Sequence[SegmentationSummary]) -> str:
    header = ("UPerNet", "params", "(paper)", "GFLOPs 512x2048", "(paper)", "mIoU", "mIoU ms")
    lines = [header]
    for r in rows:
        p = r.paper
        lines.append(
            (
                r.backbone,
                f"{r.params / 1e6:.1f}M",
                f"{p.params_m:.0f}M" if p else "-",
                f"{r.gmacs:.0f}" if r.gmacs is not None else "-",
                f"{p.gflops:.0f}" if p else "-",
                f"{p.miou:.1f}" if p else "-",
                f"{p.miou_ms:.1f}" if p else "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    return "\n".join([text[0], "  ".join("-" * w for w in widths), *text[1:]])
