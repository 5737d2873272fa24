"""Cascade RoI heads (Cai & Vasconcelos, 2018) on torchvision's parts.

Each stage is a torchvision :class:`~torchvision.models.detection.roi_heads.RoIHeads` (its
proposal matcher at the stage's IoU threshold, its sampler, its box coder with the stage's
weights, its box and mask heads); this module only chains them: the boxes a stage regresses are
the proposals of the next. As in mmdetection's ``CascadeRoIHead``, every stage has a mask head;
the stages' box scores and mask probabilities are averaged at inference.

Training losses per stage ``s`` (weighted by ``stage_weights[s]``): cross-entropy on the sampled
RoIs, a GIoU loss (weight ``giou_weight``) between the decoded box of each positive RoI's class and
its ground truth, summed over positives and divided by the number of sampled RoIs (mmdetection's
``reg_decoded_bbox`` with ``avg_factor``), and the mask loss on the positives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import clip_boxes_to_image, generalized_box_iou_loss

__all__ = ["CascadeRoIHeads"]

Target = dict[str, torch.Tensor]


class CascadeRoIHeads(nn.Module):
    """``stages``: one torchvision ``RoIHeads`` per stage, each with a mask branch, in order of
    increasing IoU threshold. Called like ``RoIHeads``: ``(features, proposals, image_shapes,
    targets)`` -> ``(detections, losses)``; ``proposals`` ``[N_i, 4]`` per image
    (x1, y1, x2, y2)."""

    def __init__(
        self, stages: Sequence[RoIHeads], stage_weights: Sequence[float], giou_weight: float = 10.0
    ) -> None:
        super().__init__()
        if len(stages) != len(stage_weights):
            raise ValueError(
                f"stage_weights={list(stage_weights)} must have one weight per stage "
                f"({len(stages)} stages)"
            )
        self.stages = nn.ModuleList(stages)
        self.stage_weights = tuple(stage_weights)
        self.giou_weight = giou_weight

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[Target] | None = None,
    ) -> tuple[list[Target], dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets=None: the cascade RoI heads need targets in training")
            return [], self._losses(features, proposals, image_shapes, targets)
        return self._detect(features, proposals, image_shapes), {}

    def _boxes(
        self, stage: RoIHeads, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """Class logits ``[R, classes]``, box deltas ``[R, classes * 4]`` and the per-class
        decoded boxes ``[R, classes, 4]``."""
        x = stage.box_head(stage.box_roi_pool(features, proposals, image_shapes))
        logits, deltas = stage.box_predictor(x)
        return logits, deltas, stage.box_coder.decode(deltas, proposals)

    def _mask_logits(
        self, stage: RoIHeads, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:  # fmt: skip
        x = stage.mask_head(stage.mask_roi_pool(features, boxes, image_shapes))
        return stage.mask_predictor(x)

    def _losses(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[Target],
    ) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        gt_boxes = [t["boxes"] for t in targets]
        for s, (stage, weight) in enumerate(zip(self.stages, self.stage_weights, strict=True)):
            rois, matched, labels, _ = stage.select_training_samples(proposals, targets)
            logits, _, boxes = self._boxes(stage, features, rois, image_shapes)
            all_labels = torch.cat(labels)
            pos = torch.where(all_labels > 0)[0]
            matched_boxes = torch.cat(
                [
                    g[m] if len(g) else torch.zeros_like(r)
                    for g, m, r in zip(gt_boxes, matched, rois, strict=True)
                ]
            )
            giou = generalized_box_iou_loss(
                boxes[pos, all_labels[pos]], matched_boxes[pos], reduction="sum"
            )
            losses[f"s{s}.loss_classifier"] = weight * F.cross_entropy(logits, all_labels)
            losses[f"s{s}.loss_box_giou"] = (
                weight * self.giou_weight * giou / max(1, all_labels.numel())
            )
            pos_rois, pos_matched = [], []
            for r, m, lab in zip(rois, matched, labels, strict=True):
                keep = torch.where(lab > 0)[0]
                pos_rois.append(r[keep])
                pos_matched.append(m[keep])
            mask_logits = self._mask_logits(stage, features, pos_rois, image_shapes)
            gt_masks = [t["masks"] for t in targets]
            gt_labels = [t["labels"] for t in targets]
            losses[f"s{s}.loss_mask"] = weight * maskrcnn_loss(
                mask_logits, pos_rois, gt_masks, gt_labels, pos_matched
            )
            if s + 1 < len(self.stages):
                # the next stage's proposals: positives regressed by their ground-truth class,
                # the rest by their most likely class
                refine = torch.where(all_labels > 0, all_labels, logits[:, 1:].argmax(1) + 1)
                proposals = self._refined(boxes, refine, rois, image_shapes)
        return losses

    @staticmethod
    def _refined(
        boxes: torch.Tensor, labels: torch.Tensor, rois: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[torch.Tensor]:  # fmt: skip
        chosen = boxes[torch.arange(len(labels), device=labels.device), labels].detach()
        return [
            clip_boxes_to_image(b, shape)
            for b, shape in zip(chosen.split([len(r) for r in rois]), image_shapes, strict=True)
        ]

    @torch.no_grad()
    def _detect(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[Target]:
        scores = []
        for s, stage in enumerate(self.stages):
            logits, deltas, boxes = self._boxes(stage, features, proposals, image_shapes)
            scores.append(F.softmax(logits, -1))
            if s + 1 < len(self.stages):
                proposals = self._refined(
                    boxes, logits[:, 1:].argmax(1) + 1, proposals, image_shapes
                )
        # postprocess_detections takes logits: the log of the averaged probabilities is one
        mean_logits = torch.stack(scores).mean(0).clamp_min(1e-12).log()
        boxes, box_scores, labels = self.stages[-1].postprocess_detections(
            mean_logits, deltas, proposals, image_shapes
        )
        probs = [
            maskrcnn_inference(self._mask_logits(stage, features, boxes, image_shapes), labels)
            for stage in self.stages
        ]
        masks = [torch.stack(per_image).mean(0) for per_image in zip(*probs, strict=True)]
        return [
            {"boxes": b, "scores": sc, "labels": lab, "masks": m}
            for b, sc, lab, m in zip(boxes, box_scores, labels, masks, strict=True)
        ]
