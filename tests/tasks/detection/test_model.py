"""The detectors: parameter counts against the paper (on the meta device), GFLOPs (slow), and
forward passes of a tiny one in training and evaluation."""

from __future__ import annotations

import math

import pytest
import torch

import nat.detection
from nat.models import count_params
from nat.tasks.detection import PAPER, DetectConfig, create_detector
from nat.tasks.detection.summary import count_gflops

from .tiny import TINY_SETTINGS


@pytest.mark.parametrize(("architecture", "backbone"), list(PAPER))
def test_parameters_are_within_two_percent_of_the_paper(architecture, backbone):
    with torch.device("meta"):
        model = create_detector(architecture, backbone, 81)
    params = count_params(model) / 1e6
    assert (
        abs(params - PAPER[architecture, backbone].params_m)
        / PAPER[architecture, backbone].params_m
        < 0.02
    )


@pytest.mark.slow
@pytest.mark.parametrize(("architecture", "backbone"), list(PAPER))
def test_gflops_at_1280x800_are_within_two_percent_of_the_paper(architecture, backbone):
    with torch.device("meta"):
        model = create_detector(architecture, backbone, 81)
    paper = PAPER[architecture, backbone].gflops
    assert abs(count_gflops(model) - paper) / paper < 0.02


def test_the_public_module_builds_both_architectures():
    with torch.device("meta"):
        plain = nat.detection.mask_rcnn("nat_mini", num_classes=81)
        cascade = nat.detection.cascade_mask_rcnn("nat_mini", num_classes=81)
    assert (plain.architecture, cascade.architecture) == ("mask_rcnn", "cascade_mask_rcnn")
    assert len(cascade.roi_heads.stages) == 3
    ious = [s.proposal_matcher.high_threshold for s in cascade.roi_heads.stages]
    assert ious == [0.5, 0.6, 0.7]
    assert [s.box_coder.weights for s in cascade.roi_heads.stages][2] == pytest.approx(
        (1 / 0.033, 1 / 0.033, 1 / 0.067, 1 / 0.067)
    )


def _tiny(architecture: str, num_classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = DetectConfig(**TINY_SETTINGS).model_kwargs()
    return create_detector(architecture, "nat_mini", num_classes, **kwargs)


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:30, 10:40] = 1
    masks[1, 34:60, 30:58] = 1
    target = {
        "boxes": torch.tensor([[10.0, 8, 40, 30], [30, 34, 58, 60]]),
        "labels": torch.tensor([1, 3]),
        "masks": masks,
    }
    return [torch.rand(3, 64, 64), torch.rand(3, 64, 64)], [target, target]


@pytest.mark.parametrize("architecture", ["mask_rcnn", "cascade_mask_rcnn"])
def test_training_gives_finite_losses_and_gradients_to_every_head(architecture):
    model = _tiny(architecture).train()
    losses = model(*_batch())
    expected = 3 if architecture == "mask_rcnn" else 9
    assert len([k for k in losses if "rpn" not in k and "objectness" not in k]) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    without = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without == []


@pytest.mark.parametrize("architecture", ["mask_rcnn", "cascade_mask_rcnn"])
def test_evaluation_gives_boxes_labels_scores_and_masks_in_input_pixels(architecture):
    model = _tiny(architecture).eval()
    image = torch.rand(3, 50, 70)
    with torch.no_grad():
        (out,) = model([image])
    assert out["masks"].shape[1:] == (1, 50, 70)
    assert len(out["boxes"]) == len(out["labels"]) == len(out["scores"]) == len(out["masks"])
    if len(out["boxes"]):
        assert out["boxes"][:, 2].max() <= 70 and out["boxes"][:, 3].max() <= 50
        assert out["labels"].min() >= 1 and out["labels"].max() <= 3


def test_a_timm_backbone_by_name():
    model = create_detector("mask_rcnn", "resnet18", 3, fpn_channels=32, representation=64)
    assert model.backbone.fpn.inner_blocks[0][0].in_channels == 64


def test_an_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="backbone='no_such_net'"):
        create_detector("mask_rcnn", "no_such_net", 3)


def test_rpb_tables_get_no_weight_decay():
    names = _tiny("mask_rcnn").no_weight_decay()
    assert names and all(
        n.startswith("backbone.body.levels.") and n.endswith(".rpb") for n in names
    )


def test_a_size_range_without_objects_has_no_score_not_zero() -> None:
    from nat.tasks.detection.evaluate import _percent

    assert _percent("APl", 0.5) == 50.0
    assert math.isnan(_percent("APl", -1.0))  # COCOeval's -1: no large object in the data
    assert _percent("AP", -1.0) == 0.0  # no object at all: the comparable worst score
