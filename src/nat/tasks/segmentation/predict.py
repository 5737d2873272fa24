"""Predictions for image files: the class map, drawn as a colour overlay with a legend."""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ...data import decode_image
from ...data.segmentation import SYNTHETIC, SegmentationFolder
from ...files import atomic_open
from .config import SegmentConfig
from .data import eval_protocol, eval_transform, open_split
from .evaluate import load_segmenter
from .inference import infer

__all__ = ["overlay", "palette", "predict"]

_SWATCH = 14
_LEGEND_WIDTH = 180


def palette(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8 colours, well apart in hue (golden-ratio steps)."""
    colours = [
        colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65 + 0.35 * (i % 2), 0.95)
        for i in range(num_classes)
    ]
    return (np.asarray(colours) * 255).round().astype(np.uint8)


def overlay(
    image: np.ndarray, labels: np.ndarray, classes: list[str], *, alpha: float = 0.5
) -> Image.Image:
    """``image`` ``[H, W, 3]`` blended with the colours of ``labels`` ``[H, W]``, and a legend
    on the right naming each class present with its share of the pixels."""
    colours = palette(len(classes))
    blended = (image * (1 - alpha) + colours[labels] * alpha).round().astype(np.uint8)
    present, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts)
    height = max(image.shape[0], _SWATCH * (len(present) + 1) + 8)
    canvas = Image.new("RGB", (image.shape[1] + _LEGEND_WIDTH, height), (255, 255, 255))
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = image.shape[1] + 6
    for row, k in enumerate(order):
        y = 4 + row * (_SWATCH + 2)
        cls = int(present[k])
        draw.rectangle([x0, y, x0 + _SWATCH, y + _SWATCH], fill=tuple(int(c) for c in colours[cls]))
        share = 100 * counts[k] / labels.size
        draw.text((x0 + _SWATCH + 6, y + 1), f"{classes[cls]} {share:.1f}%", fill=(0, 0, 0))
    return canvas


@torch.no_grad()
def predict(
    images: list[str | os.PathLike[str]],
    checkpoint: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    backbone: str | None = None,
    data: str | None = None,
    multi_scale: bool = False,
    flip: bool = False,
    mode: str | None = None,
    scale: Sequence[int] | None = None,
    alpha: float = 0.5,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Segment each image and write ``<output_dir>/<stem>_overlay.png``. Class names come from
    the training checkpoint, or (an mmsegmentation checkpoint, with ``backbone``) from ``data``'s
    class list. Returns, per image, the overlay's path and each class's share of the pixels."""
    if not images:
        raise ValueError("no images given")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    missing = [str(p) for p in images if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"image {missing[0]!r} does not exist")
    classes = None
    if data is not None and data != SYNTHETIC:
        classes = SegmentationFolder(data, "val").classes
    elif data == SYNTHETIC:
        classes = open_split(SegmentConfig(), "val")[1]
    model, config, trained = load_segmenter(
        checkpoint, backbone=backbone, num_classes=len(classes) if classes else None
    )
    classes = trained or classes
    protocol = eval_protocol(
        config or SegmentConfig(), multi_scale=multi_scale, flip=flip, mode=mode, scale=scale
    )
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    transform = eval_transform()
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for path in images:
        pixels = np.asarray(decode_image(path))
        tensor, _ = transform(pixels, np.zeros(pixels.shape[:2], np.uint8))
        probs = infer(model, tensor[None].to(dev), protocol)
        labels = probs.argmax(dim=1)[0].cpu().numpy()
        target = out_dir / f"{Path(path).stem}_overlay.png"
        with atomic_open(target, "wb") as f:
            overlay(pixels, labels, classes, alpha=alpha).save(f, format="PNG")
        present, counts = np.unique(labels, return_counts=True)
        results.append(
            {
                "image": str(path),
                "overlay": str(target),
                "classes": {
                    classes[int(k)]: float(c / labels.size)
                    for k, c in zip(present, counts, strict=True)
                },
            }
        )
    return results
