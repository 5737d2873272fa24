"""Mask R-CNN and Cascade Mask R-CNN on a NAT (or any timm ``features_only``) backbone, joined
from torchvision's detection parts as in the paper's mmdetection configs.

Both: backbone -> FPN (256 channels, 4 levels + a max-pooled fifth) -> RPN (anchors 8x the
level's stride, aspect ratios 0.5/1/2, one sigmoid logit per anchor) -> RoIAlign 7x7 (boxes) and
14x14 (masks) -> a 4-conv mask head. Mask R-CNN: a two-fc (1024) box head. Cascade: three stages
(IoU 0.5/0.6/0.7, loss weights 1/0.5/0.25, box-coder stds 0.1/0.05/0.033 for centres and
0.2/0.1/0.067 for sizes), each a box head of 4 convs (256, BatchNorm) and one fc (1024) with
class-specific regression and a GIoU loss, and a mask head per stage.

Class index 0 is the background (torchvision's convention); ``num_classes`` counts it, so COCO
is ``num_classes=81`` (mmdetection's 80 + its background logit).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .cascade import CascadeRoIHeads

__all__ = [
    "ARCHITECTURES",
    "PAPER",
    "BackboneFPN",
    "DetectionTransform",
    "Detector",
    "Paper",
    "cascade_mask_rcnn",
    "create_backbone",
    "create_detector",
    "mask_rcnn",
]

ARCHITECTURES = ("mask_rcnn", "cascade_mask_rcnn")
CASCADE_IOUS = (0.5, 0.6, 0.7)
CASCADE_WEIGHTS = (1.0, 0.5, 0.25)
CASCADE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Paper:
    """The paper's COCO figures (3x schedule): params (millions), GFLOPs at 1280x800, mAPs."""

    params_m: float
    gflops: float
    box_ap: float
    mask_ap: float


PAPER: dict[tuple[str, str], Paper] = {
    ("mask_rcnn", "nat_mini"): Paper(40, 225, 46.5, 41.7),
    ("mask_rcnn", "nat_tiny"): Paper(48, 258, 47.7, 42.6),
    ("mask_rcnn", "nat_small"): Paper(70, 330, 48.4, 43.2),
    ("cascade_mask_rcnn", "nat_mini"): Paper(77, 704, 50.3, 43.6),
    ("cascade_mask_rcnn", "nat_tiny"): Paper(85, 737, 51.4, 44.5),
    ("cascade_mask_rcnn", "nat_small"): Paper(108, 809, 52.0, 44.9),
    ("cascade_mask_rcnn", "nat_base"): Paper(147, 931, 52.3, 45.1),
}


class BackboneFPN(nn.Module):
    """A backbone returning maps of strides 4..32 (a list, channels-first), then an FPN.

    ``[B, 3, H, W]`` -> ``OrderedDict`` ``"0"``..``"3"`` (strides 4..32) and ``"pool"`` (64),
    each ``[B, out_channels, H/stride, W/stride]``.
    """

    def __init__(self, body: nn.Module, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body(x)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


class _LastFour(nn.Module):
    """A timm ``features_only`` model reduced to its last four outputs (strides 4..32)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))[-4:]


def create_backbone(
    name: str, *, pretrained: bool = False, backbone_args: dict[str, Any] | None = None
) -> tuple[nn.Module, list[int]]:
    """``name``'s feature maps of strides 4, 8, 16, 32 and their channels.

    NAT/DiNAT build a :class:`nat.models.NATBackbone` (mmdetection's layout); any other timm
    model is built ``features_only`` and must have those four strides among its outputs.
    ``backbone_args`` go to ``timm.create_model`` (e.g. a smaller ``embed_dim``).
    """
    args = dict(backbone_args or {})
    try:
        body = timm.create_model(name, pretrained=pretrained, features_only=True, **args)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"backbone={name!r} is not a timm model") from None
        raise
    strides = list(body.feature_info.reduction())
    channels = list(body.feature_info.channels())
    if strides[-4:] != [4, 8, 16, 32]:
        raise ValueError(
            f"backbone={name!r} gives feature maps of strides {strides}; the FPN needs its last "
            f"four to be 4, 8, 16, 32"
        )
    if len(strides) > 4:
        body = _LastFour(body)
    return body, channels[-4:]


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's transform (normalise, batch with padding to a multiple of 32), resizing only
    in evaluation (to ``min_size``/``max_size``): in training the data pipeline has already
    resized (the paper's multi-scale augmentation)."""

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        if self.training:
            return image, target
        return super().resize(image, target)


class Detector(GeneralizedRCNN):
    """torchvision's generalised R-CNN (``transform``, ``backbone``, ``rpn``, ``roi_heads``) with
    the facts the training needs: the architecture, the classes, the parameters without decay.

    ``model(images)`` (a list of ``[3, H, W]`` float images in [0, 1]) -> one dict per image with
    ``boxes`` ``[D, 4]`` (x1, y1, x2, y2 in input pixels), ``labels`` ``[D]`` (1..classes-1),
    ``scores`` ``[D]`` and ``masks`` ``[D, 1, H, W]`` (probabilities); in training
    ``model(images, targets)`` -> a dict of losses.
    """

    def __init__(
        self, architecture: str, num_classes: int, backbone: BackboneFPN, rpn: nn.Module,
        roi_heads: nn.Module, transform: GeneralizedRCNNTransform,
    ) -> None:  # fmt: skip
        super().__init__(backbone, rpn, roi_heads, transform)
        self.architecture = architecture
        self.num_classes = num_classes

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The backbone's relative positional bias tables (timm exempts 1-D parameters)."""
        body = self.backbone.body
        own = body.no_weight_decay() if hasattr(body, "no_weight_decay") else set()
        return {f"backbone.body.{name}" for name in own}


def _rpn(channels: int, sizes: Sequence[int], train_pre: int, train_post: int) -> nn.Module:
    anchors = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes))
    return RegionProposalNetwork(
        anchors,
        RPNHead(channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n={"training": train_pre, "testing": 1000},
        post_nms_top_n={"training": train_post, "testing": 1000},
        nms_thresh=0.7,
    )


def _roi_heads(
    channels: int, num_classes: int, box_head: nn.Module, representation: int, *,
    iou: float, stds: Sequence[float], rois_per_image: int, mask_pool: MultiScaleRoIAlign,
    box_pool: MultiScaleRoIAlign,
) -> RoIHeads:  # fmt: skip
    return RoIHeads(
        box_pool,
        box_head,
        FastRCNNPredictor(representation, num_classes),
        fg_iou_thresh=iou,
        bg_iou_thresh=iou,
        batch_size_per_image=rois_per_image,
        positive_fraction=0.25,
        bbox_reg_weights=tuple(1 / s for s in stds),
        score_thresh=0.05,
        nms_thresh=0.5,
        detections_per_img=100,
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(channels, [channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(channels, channels, num_classes),
    )


def create_detector(
    architecture: str,
    backbone: str = "nat_tiny",
    num_classes: int = 81,
    *,
    pretrained_backbone: bool = False,
    backbone_args: dict[str, Any] | None = None,
    fpn_channels: int = 256,
    representation: int = 1024,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    rpn_train_pre: int = 2000,
    rpn_train_post: int = 1000,
    rois_per_image: int = 512,
    min_size: int = 800,
    max_size: int = 1333,
) -> Detector:
    """``architecture`` (``mask_rcnn`` or ``cascade_mask_rcnn``) with ``backbone`` (a NAT/DiNAT
    variant or any timm model with stride-4..32 features). ``num_classes`` includes the
    background (COCO: 81). The defaults are the paper's; the keywords shrink the heads
    (``fpn_channels``; ``representation``: the box head's fc width), the anchors (one size per
    FPN level), the sampling (RPN proposals kept in training, RoIs per image) and the evaluation
    resize (shorter side ``min_size``, longer side at most ``max_size``)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture={architecture!r} must be one of {', '.join(ARCHITECTURES)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"num_classes={num_classes!r} must be an integer >= 2 (the background counts: "
            f"COCO is 81)"
        )
    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes={list(anchor_sizes)} must give one size per FPN level (5)")
    body, in_channels = create_backbone(
        backbone, pretrained=pretrained_backbone, backbone_args=backbone_args
    )
    neck = BackboneFPN(body, in_channels, fpn_channels)
    levels = ["0", "1", "2", "3"]
    box_pool = MultiScaleRoIAlign(levels, 7, sampling_ratio=0)
    mask_pool = MultiScaleRoIAlign(levels, 14, sampling_ratio=0)
    heads = dict(rois_per_image=rois_per_image, mask_pool=mask_pool, box_pool=box_pool)
    if architecture == "mask_rcnn":
        box_head = TwoMLPHead(fpn_channels * 7 * 7, representation)
        roi_heads: nn.Module = _roi_heads(
            fpn_channels, num_classes, box_head, representation, iou=0.5,
            stds=(0.1, 0.1, 0.2, 0.2), **heads,
        )  # fmt: skip
    else:
        stages = [
            _roi_heads(
                fpn_channels,
                num_classes,
                FastRCNNConvFCHead(
                    (fpn_channels, 7, 7), [fpn_channels] * 4, [representation], nn.BatchNorm2d
                ),
                representation,
                iou=iou,
                stds=stds,
                **heads,
            )
            for iou, stds in zip(CASCADE_IOUS, CASCADE_STDS, strict=True)
        ]
        roi_heads = CascadeRoIHeads(stages, CASCADE_WEIGHTS)
    transform = DetectionTransform(min_size, max_size, IMAGENET_MEAN, IMAGENET_STD)
    rpn = _rpn(fpn_channels, anchor_sizes, rpn_train_pre, rpn_train_post)
    return Detector(architecture, num_classes, neck, rpn, roi_heads, transform)


def mask_rcnn(backbone: str = "nat_tiny", num_classes: int = 81, **kwargs: Any) -> Detector:
    """Mask R-CNN; arguments as :func:`create_detector`."""
    return create_detector("mask_rcnn", backbone, num_classes, **kwargs)


def cascade_mask_rcnn(backbone: str = "nat_tiny", num_classes: int = 81, **kwargs: Any) -> Detector:
    """Cascade Mask R-CNN (three stages); arguments as :func:`create_detector`."""
    return create_detector("cascade_mask_rcnn", backbone, num_classes, **kwargs)
