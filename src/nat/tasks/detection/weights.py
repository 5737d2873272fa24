"""Detector weights: mmdetection 2.x checkpoints (the published NAT Mask R-CNN and Cascade Mask
R-CNN) <-> this package's torchvision-based detectors, and loading any supported file.

Key map (``{i}`` a level or layer, ``{s}`` a cascade stage; mmdetection -> here):

- ``backbone.`` -> ``backbone.body.``;
- ``neck.lateral_convs.{i}.conv.`` -> ``backbone.fpn.inner_blocks.{i}.0.``, ``neck.fpn_convs``
  -> ``backbone.fpn.layer_blocks``;
- ``rpn_head.rpn_conv.`` / ``rpn_cls.`` / ``rpn_reg.`` -> ``rpn.head.conv.0.0.`` /
  ``cls_logits.`` / ``bbox_pred.``;
- Mask R-CNN: ``roi_head.bbox_head.shared_fcs.0.`` / ``.1.`` -> ``roi_heads.box_head.fc6.`` /
  ``fc7.``; ``fc_cls`` / ``fc_reg`` -> ``roi_heads.box_predictor.cls_score`` / ``bbox_pred``;
  ``roi_head.mask_head.convs.{i}.conv.`` -> ``roi_heads.mask_head.{i}.0.``, ``upsample`` ->
  ``roi_heads.mask_predictor.conv5_mask``, ``conv_logits`` -> ``mask_fcn_logits``;
- Cascade: the same under ``roi_head.{bbox,mask}_head.{s}.`` -> ``roi_heads.stages.{s}.``, and
  the box head's ``shared_convs.{i}.conv.`` / ``.bn.`` -> ``box_head.{i}.0.`` / ``.1.``,
  ``shared_fcs.0.`` -> ``box_head.5.``.

Values change in three places. mmdetection puts the background class last (``fc_cls`` has
K + 1 rows, background at K) and has no background rows in ``fc_reg`` (4K) or ``conv_logits``
(K); torchvision puts it first: the background row moves to the front, and zero rows are added
for it in the regression and mask logits (they are never read). A class-agnostic ``fc_reg`` (4
rows) is repeated per class. An RPN trained with a softmax (``rpn_cls`` with two channels per
anchor, foreground first) becomes one sigmoid logit per anchor, ``fg - bg``, which gives the
same probability; the published checkpoints use the sigmoid already (one channel per anchor).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ...files import CheckpointError
from ...models import load_pretrained, load_state_dict_strict, read_checkpoint
from .model import Detector

__all__ = ["from_mmdet", "is_mmdet_detector", "load_detector_weights", "to_mmdet"]

StateDict = dict[str, torch.Tensor]

# (mmdetection, here) key templates: {R} any rest, {I} a level or layer, {S} a cascade stage, {P}
# a parameter name; {s} marks where a cascade puts its stage
_COMMON = [
    ("backbone.{R}", "backbone.body.{R}"),
    ("neck.lateral_convs.{I}.conv.{P}", "backbone.fpn.inner_blocks.{I}.0.{P}"),
    ("neck.fpn_convs.{I}.conv.{P}", "backbone.fpn.layer_blocks.{I}.0.{P}"),
    ("rpn_head.rpn_conv.{P}", "rpn.head.conv.0.0.{P}"),
    ("rpn_head.rpn_cls.{P}", "rpn.head.cls_logits.{P}"),
    ("rpn_head.rpn_reg.{P}", "rpn.head.bbox_pred.{P}"),
]
_HEADS = [
    ("roi_head.mask_head{s}.convs.{I}.conv.{P}", "roi_heads{s}.mask_head.{I}.0.{P}"),
    ("roi_head.mask_head{s}.upsample.{P}", "roi_heads{s}.mask_predictor.conv5_mask.{P}"),
    ("roi_head.mask_head{s}.conv_logits.{P}", "roi_heads{s}.mask_predictor.mask_fcn_logits.{P}"),
    ("roi_head.bbox_head{s}.fc_cls.{P}", "roi_heads{s}.box_predictor.cls_score.{P}"),
    ("roi_head.bbox_head{s}.fc_reg.{P}", "roi_heads{s}.box_predictor.bbox_pred.{P}"),
]
_TWO_FC = [
    ("roi_head.bbox_head.shared_fcs.0.{P}", "roi_heads.box_head.fc6.{P}"),
    ("roi_head.bbox_head.shared_fcs.1.{P}", "roi_heads.box_head.fc7.{P}"),
]
_CONV_FC = [
    ("roi_head.bbox_head{s}.shared_convs.{I}.conv.{P}", "roi_heads{s}.box_head.{I}.0.{P}"),
    ("roi_head.bbox_head{s}.shared_convs.{I}.bn.{P}", "roi_heads{s}.box_head.{I}.1.{P}"),
    ("roi_head.bbox_head{s}.shared_fcs.0.{P}", "roi_heads{s}.box_head.5.{P}"),
]
_GROUPS = {"R": r"(?P<R>.+)", "I": r"(?P<I>\d+)", "S": r"(?P<S>\d+)", "P": r"(?P<P>\w+)"}
_BACKGROUND_LAST = re.compile(r"\.fc_cls\.\w+$")
_NO_BACKGROUND = re.compile(r"\.(fc_reg|conv_logits)\.\w+$")


def _rules(architecture: str) -> list[tuple[str, str]]:
    """(mmdetection, here) templates of ``architecture``."""
    if architecture == "mask_rcnn":
        heads = [(m.format_map(_Keep(s="")), h.format_map(_Keep(s=""))) for m, h in _HEADS]
        return _COMMON + heads + _TWO_FC
    heads = [
        (m.format_map(_Keep(s=".{S}")), h.format_map(_Keep(s=".stages.{S}")))
        for m, h in (*_HEADS, *_CONV_FC)
    ]
    return _COMMON + heads


class _Keep(dict):
    """``str.format_map`` that leaves unknown placeholders as they are."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for name, group in _GROUPS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), group)
    return re.compile(f"^{pattern}$")


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for rx, template in rules:
        match = rx.match(key)
        if match:
            return template.format(**match.groupdict())
    return None


def is_mmdet_detector(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether the keys are an mmdetection detector's (a neck and an RPN head)."""
    return any(k.startswith("neck.") for k in state_dict) and any(
        k.startswith("rpn_head.") for k in state_dict
    )


def from_mmdet(state_dict: Mapping[str, torch.Tensor], architecture: str) -> StateDict:
    """An mmdetection ``state_dict`` of ``architecture`` -> this package's keys and layouts.

    Raises :class:`~nat.files.CheckpointError` naming the first key no rule maps."""
    rules = [(_regex(m), h) for m, h in _rules(architecture)]
    out: StateDict = {}
    for key, value in state_dict.items():
        new = _rename(key, rules)
        if new is None:
            raise CheckpointError(
                f"mmdetection key {key!r} has no counterpart in {architecture} (is the "
                f"checkpoint a {architecture.replace('_', ' ')}?)"
            )
        out[new] = _to_torchvision(key, value)
    return out


def _to_torchvision(key: str, value: torch.Tensor) -> torch.Tensor:
    if _BACKGROUND_LAST.search(key):
        return torch.cat([value[-1:], value[:-1]])
    if _NO_BACKGROUND.search(key):
        if ".fc_reg." in key and value.shape[0] == 4:
            return value  # class-agnostic: expanded when the number of classes is known
        width = 4 if "fc_reg" in key else 1
        return torch.cat([value.new_zeros((width, *value.shape[1:])), value])
    if key.startswith("rpn_head.rpn_cls") and _is_softmax_rpn(value):
        return value[0::2] - value[1::2]
    return value


def _is_softmax_rpn(value: torch.Tensor) -> bool:
    """Three anchors per location: a sigmoid RPN has 3 channels, a softmax one 6."""
    return value.shape[0] == 6


def to_mmdet(state_dict: Mapping[str, torch.Tensor], architecture: str) -> StateDict:
    """This package's ``state_dict`` -> mmdetection's keys and layouts (background last, no
    background rows in the regression and mask logits, a sigmoid RPN)."""
    rules = [(_regex(h), m) for m, h in _rules(architecture)]
    out: StateDict = {}
    for key, value in state_dict.items():
        new = _rename(key, rules)
        if new is None:
            raise CheckpointError(f"key {key!r} has no mmdetection counterpart in {architecture}")
        if _BACKGROUND_LAST.search(new):
            value = torch.cat([value[1:], value[:1]])
        elif _NO_BACKGROUND.search(new):
            value = value[4:] if "fc_reg" in new else value[1:]
        out[new] = value
    return out


def load_detector_weights(model: Detector, path: str | os.PathLike[str]) -> str:
    """Load ``path`` into ``model``; returns what it was: ``"detector"`` (this package's keys,
    a training checkpoint or a bare state dict), ``"mmdetection"`` (converted with
    :func:`from_mmdet`) or ``"backbone"`` (a classification or mm* backbone checkpoint, loaded
    into ``model.backbone.body``; the rest keeps its initial values).

    Every key and shape must fit, else :class:`~nat.files.CheckpointError` names the file and the
    differences."""
    path = Path(path)
    source = f"checkpoint={str(path)!r}"
    state_dict = read_checkpoint(path).state_dict
    if is_mmdet_detector(state_dict):
        converted = from_mmdet(state_dict, model.architecture)
        _expand_agnostic(converted, model)
        load_state_dict_strict(model, converted, source)
        return "mmdetection"
    if any(k.startswith(("backbone.body.", "rpn.")) for k in state_dict):
        load_state_dict_strict(model, state_dict, source)
        return "detector"
    load_pretrained(model.backbone.body, path)
    return "backbone"


def _expand_agnostic(state_dict: StateDict, model: nn.Module) -> None:
    """Class-agnostic regression (4 rows) repeated for every class of ``model``."""
    expected = model.state_dict()
    for key, value in state_dict.items():
        if key.endswith(("bbox_pred.weight", "bbox_pred.bias")) and "roi_heads" in key:
            rows = expected[key].shape[0] if key in expected else value.shape[0]
            if value.shape[0] == 4 and rows > 4:
                state_dict[key] = value.repeat(rows // 4, *([1] * (value.dim() - 1)))
