"""Top-k predictions for image files."""

from __future__ import annotations

import os
from typing import Any

import torch

from ...data import create_eval_transform, decode_image
from .checkpoint import load_checkpoint
from .loaders import data_config_for
from .model import TRAIN_CHECKPOINT_FORMAT, create_classifier, load_classifier_weights

__all__ = ["predict"]

_IMAGENET_CLASSES = 1000


@torch.no_grad()
def predict(
    images: list[str | os.PathLike[str]],
    model_name: str,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    top_k: int = 5,
    num_classes: int | None = None,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """For each image, its ``top_k`` classes as ``{"index", "label", "probability"}``.

    Weights come from ``checkpoint``, else timm's pretrained weights. Labels: the class names a
    training checkpoint carries, ImageNet's descriptions (timm's ImageNet info) for 1000-class
    models, else the index.
    """
    if not images:
        raise ValueError("no images given")
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1")
    missing = [str(path) for path in images if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"image {missing[0]!r} does not exist")
    state = load_checkpoint(checkpoint) if checkpoint is not None else {}
    ours = state.get("format") == TRAIN_CHECKPOINT_FORMAT
    if num_classes is None and ours:
        num_classes = len(state["classes"])
    model = create_classifier(model_name, num_classes=num_classes, pretrained=checkpoint is None)
    if checkpoint is not None:
        load_classifier_weights(model, checkpoint, model_name=model_name, state=state)
    saved_cfg = (state.get("data_config") or {}) if ours else {}
    data_cfg = data_config_for(
        model,
        input_size=(saved_cfg.get("input_size") or [None])[-1],
        interpolation=saved_cfg.get("interpolation"),
        crop_pct=saved_cfg.get("crop_pct"),
        mean=saved_cfg.get("mean"),
        std=saved_cfg.get("std"),
    )
    transform = create_eval_transform(data_cfg)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev).eval()
    labels = _labels(state["classes"] if ours else None, model.num_classes)
    results = []
    for path in images:
        batch = transform(decode_image(path)).unsqueeze(0).to(dev)
        probs = model(batch).float().softmax(dim=-1)[0]
        values, indices = probs.topk(min(top_k, probs.numel()))
        results.append(
            {
                "image": str(path),
                "top": [
                    {"index": int(i), "label": labels(int(i)), "probability": float(p)}
                    for p, i in zip(values, indices, strict=True)
                ],
            }
        )
    return results


def _labels(classes: list[str] | None, num_classes: int):
    if classes:
        return lambda i: classes[i]
    if num_classes == _IMAGENET_CLASSES:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return lambda i: info.index_to_description(i)
    return str
