"""COCO evaluation: the detector's boxes and masks on a :class:`nat.data.CocoInstances` split,
scored by pycocotools' ``COCOeval`` (box and mask AP, AP50, AP75, small/medium/large), every
rank predicting its shard and rank 0 scoring them all."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ...data.coco import CocoInstances
from ...engine import DistEnv, autocast, broadcast, gather

__all__ = ["METRICS", "coco_results", "evaluate", "score_results"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""The first six numbers of ``COCOeval.stats``, reported per IoU type as ``bbox_AP`` ...
``segm_APl`` (percent)."""
_IOU_TYPES = ("bbox", "segm")


@torch.no_grad()
def coco_results(
    model: nn.Module,
    loader: DataLoader,
    dataset: CocoInstances,
    env: DistEnv,
    *,
    amp: str = "none",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """This rank's detections in COCO's results format (``image_id``, ``category_id``, ``bbox``
    as x, y, w, h, ``score``, ``segmentation`` as RLE of the mask at probability 0.5)."""
    model.eval()
    results = []
    for images, targets in tqdm(
        loader, desc="eval", leave=False, disable=not (progress and env.is_main)
    ):
        with autocast(env.device, amp):
            outputs = model([im.to(env.device) for im in images])
        for target, out in zip(targets, outputs, strict=True):
            results.extend(_image_results(target["image_id"], out, dataset))
    return results


def _image_results(
    image_id: int, out: dict[str, torch.Tensor], dataset: CocoInstances
) -> list[dict[str, Any]]:
    boxes = out["boxes"].float().cpu()
    boxes[:, 2:] -= boxes[:, :2]
    masks = (out["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
    # a model with more classes than the dataset has categories (COCO weights on other data):
    # its other classes cannot be scored and are left out
    return [
        {
            "image_id": image_id,
            "category_id": dataset.label_to_category(int(label)),
            "bbox": [round(float(v), 2) for v in box],
            "score": round(float(score), 5),
            "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()},
        }
        for box, label, score, rle in zip(
            boxes, out["labels"].tolist(), out["scores"].tolist(), rles, strict=True
        )
        if label <= len(dataset.category_ids)
    ]


def score_results(
    dataset: CocoInstances, results: list[dict[str, Any]], image_ids: list[int]
) -> dict[str, float]:
    """``bbox_AP`` ... ``segm_APl`` (percent) of ``results`` on ``image_ids`` of ``dataset``."""
    scores = {}
    for iou_type in _IOU_TYPES:
        if not results:
            scores.update({f"{iou_type}_{m}": 0.0 for m in METRICS})
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
            detections = dataset.coco.loadRes([dict(r) for r in results])
            evaluator = COCOeval(dataset.coco, detections, iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        for metric, stat in zip(METRICS, evaluator.stats, strict=False):
            scores[f"{iou_type}_{metric}"] = _percent(metric, float(stat))
    return scores


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    dataset: CocoInstances,
    env: DistEnv,
    *,
    amp: str = "none",
    progress: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``(scores, results)`` over every rank's shard of ``loader`` (on every rank)."""
    own = coco_results(model, loader, dataset, env, amp=amp, progress=progress)
    results = [r for part in gather(own, env) for r in part]
    image_ids = [dataset.ids[i] for i in range(len(loader.dataset))]
    scores = score_results(dataset, results, image_ids) if env.is_main else None
    return broadcast(scores, env), results


def _percent(metric: str, stat: float) -> float:
    """COCOeval's ``stat`` in percent. Its -1 means "no ground truth here": for a size range
    (APs/APm/APl: no object of that size) that is no score at all, NaN (``null`` in JSON); for the
    overall APs (no object at all) it stays 0, the score the best-checkpoint choice compares."""
    if stat >= 0:
        return stat * 100
    return float("nan") if metric in ("APs", "APm", "APl") else 0.0
