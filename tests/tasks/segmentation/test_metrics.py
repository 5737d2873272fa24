"""Metrics against hand-computed confusion matrices, single- and multi-scale evaluation, sliding
windows."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from nat.data.segmentation import IGNORE_INDEX
from nat.engine import DistEnv
from nat.tasks.segmentation import EvalProtocol, confusion_matrix, infer, segmentation_metrics
from nat.tasks.segmentation.evaluate import evaluate_model

I = IGNORE_INDEX

TARGET = torch.tensor([[0, 0, 1, 1], [0, 2, 2, I]])
PRED = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 2]])


def test_confusion_matrix_and_metrics_by_hand() -> None:
    confusion = confusion_matrix(PRED, TARGET, 4)
    # rows: true class, columns: predicted; the ignored pixel counts nowhere
    assert confusion.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    m = segmentation_metrics(confusion, ["a", "b", "c", "d"])
    iou = [2 / 4, 2 / 3, 1 / 2, None]  # hits / (labelled + predicted - hits); d: absent
    acc = [2 / 3, 2 / 2, 1 / 2, None]
    assert [c["iou"] and c["iou"] / 100 for c in m["per_class"]] == pytest.approx(iou)
    assert [c["acc"] and c["acc"] / 100 for c in m["per_class"]] == pytest.approx(acc)
    assert m["miou"] == pytest.approx(100 * (2 / 4 + 2 / 3 + 1 / 2) / 3)
    assert m["macc"] == pytest.approx(100 * (2 / 3 + 1 + 1 / 2) / 3)
    assert m["aacc"] == pytest.approx(100 * 5 / 7) and m["pixels"] == 7


class HeightVote(nn.Module):
    """Class 1 has logit ``h - 8.5`` (``h`` the input height), class 0 logit 0, everywhere: on an
    8-pixel-high image it predicts class 0, and the multi-scale average (heights 4..14) class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return torch.cat([torch.zeros(b, 1, h, w), torch.full((b, 1, h, w), h - 8.5)], dim=1)


def _loader() -> DataLoader:
    image = torch.zeros(1, 3, 8, 8)
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, :, 6:] = 1  # 48 pixels of class 0, 16 of class 1
    mask[0, 0, 0] = IGNORE_INDEX
    return DataLoader(list(zip(image, mask, strict=True)), batch_size=1)


def test_single_scale_evaluation_by_hand() -> None:
    protocol = EvalProtocol(scale=None)
    m = evaluate_model(HeightVote(), _loader(), DistEnv(), ["a", "b"], protocol)
    # everything predicted 0: class 0 IoU 47/63, class 1 IoU 0
    assert m["miou"] == pytest.approx(100 * (47 / 63 + 0) / 2)
    assert m["aacc"] == pytest.approx(100 * 47 / 63)


def test_multi_scale_flip_evaluation_by_hand() -> None:
    ratios = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    heights = [round(8 * r) for r in ratios]
    p1 = sum(1 / (1 + math.exp(-(h - 8.5))) for h in heights) / len(heights)
    assert p1 > 0.5  # so class 1 wins everywhere
    protocol = EvalProtocol(scale=None, ratios=ratios, flip=True)
    probs = infer(HeightVote(), torch.zeros(1, 3, 8, 8), protocol)
    torch.testing.assert_close(probs[0, 1], torch.full((8, 8), p1))
    m = evaluate_model(HeightVote(), _loader(), DistEnv(), ["a", "b"], protocol)
    assert m["miou"] == pytest.approx(100 * (0 + 16 / 63) / 2)
    assert m["aacc"] == pytest.approx(100 * 16 / 63)


def test_scale_fits_the_image_into_long_and_short_sides() -> None:
    seen = []

    class Record(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape[-2:]))
            return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    infer(Record(), torch.zeros(1, 3, 100, 300), EvalProtocol(scale=(2048, 512), ratios=(1.0, 0.5)))
    assert seen == [(512, 1536), (256, 768)]


def test_sliding_windows_cover_the_image_and_match_a_pointwise_model() -> None:
    class Pointwise(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :2] * 3

    x = torch.randn(1, 3, 40, 70)
    whole = infer(Pointwise(), x, EvalProtocol(scale=None))
    slide = infer(Pointwise(), x, EvalProtocol(scale=None, mode="slide", crop_size=32, stride=21))
    torch.testing.assert_close(slide, whole)
