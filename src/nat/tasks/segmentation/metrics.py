"""Semantic segmentation metrics from a confusion matrix: per-class IoU and accuracy, their means
(mIoU, mAcc) and the overall pixel accuracy (aAcc), as mmsegmentation reports them (percent;
classes absent from both labels and predictions are left out of the means)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ...data.segmentation import IGNORE_INDEX

__all__ = ["confusion_matrix", "segmentation_metrics"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[num_classes, num_classes]`` int64 counts, rows the true class, columns the predicted
    one, over the pixels whose label is not the ignore index. ``pred``, ``target``: same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} differ in shape")
    valid = target != IGNORE_INDEX
    index = target[valid].long() * num_classes + pred[valid].long()
    counts = torch.bincount(index.cpu(), minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """``miou``, ``macc``, ``aacc`` (percent), ``pixels`` and ``per_class``: for each class its
    ``iou`` and ``acc`` (``None`` where the class has no pixel in labels nor predictions, resp. in
    labels)."""
    confusion = confusion.double()
    hits = confusion.diag()
    labelled = confusion.sum(dim=1)
    predicted = confusion.sum(dim=0)
    union = labelled + predicted - hits
    iou = torch.where(union > 0, hits / union.clamp(min=1), torch.nan) * 100
    acc = torch.where(labelled > 0, hits / labelled.clamp(min=1), torch.nan) * 100
    total = labelled.sum()
    if total == 0:
        raise ValueError("no labelled pixel to evaluate (every label is the ignore index)")
    return {
        "miou": _nanmean(iou),
        "macc": _nanmean(acc),
        "aacc": float(hits.sum() / total * 100),
        "pixels": int(total),
        "per_class": [
            {"class": name, "iou": _number(i), "acc": _number(a)}
            for name, i, a in zip(classes, iou.tolist(), acc.tolist(), strict=True)
        ],
    }


def _nanmean(values: torch.Tensor) -> float:
    return float(values[~values.isnan()].mean())


def _number(value: float) -> float | None:
    return None if value != value else value
