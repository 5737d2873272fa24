"""A small synthetic COCO-format instance dataset: coloured shapes with exact masks.

Each image (``size`` x ``size``, a noisy background of random tint) holds 1-4 shapes of three
categories (``circle``, ``square``, ``triangle``) of random colour, size and place; a later shape
occludes earlier ones, and every annotation's mask, box and area are those of its visible part.
The same ``seed`` gives the same files, byte for byte.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

__all__ = ["SHAPE_CATEGORIES", "make_shapes_dataset"]

SHAPE_CATEGORIES = ("circle", "square", "triangle")
_MIN_VISIBLE = 0.3
"""An occluded shape whose visible part is below this fraction of its area is not annotated (and
its pixels stay in the image as clutter)."""


def make_shapes_dataset(
    root: str | os.PathLike[str],
    *,
    train_images: int = 160,
    val_images: int = 40,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write ``root/{train,val}2017/*.png`` and ``root/annotations/instances_{train,val}2017.json``
    (COCO's layout and format, masks as RLE) and return ``root``."""
    for name, value in (("train_images", train_images), ("val_images", val_images)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
    if not isinstance(size, int) or size < 32:
        raise ValueError(f"size={size!r} must be an integer >= 32")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_images), ("val", val_images)):
        (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image_id = index + 1
            pixels, instances = _draw_image(rng, size)
            file_name = f"{image_id:06d}.png"
            Image.fromarray(pixels).save(root / f"{split}2017" / file_name)
            images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
            for category, mask in instances:
                rle = mask_utils.encode(np.asfortranarray(mask))
                x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category + 1,
                        "bbox": [x, y, w, h],
                        "area": float(mask.sum()),
                        "iscrowd": 0,
                        "segmentation": {
                            "size": list(rle["size"]),
                            "counts": rle["counts"].decode(),
                        },
                    }
                )
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(SHAPE_CATEGORIES)]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    return root


def _draw_image(
    rng: np.random.Generator, size: int
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """``[size, size, 3]`` uint8 pixels and ``(category, [size, size] uint8 mask)`` per shape."""
    tint = rng.integers(0, 256, 3)
    noise = rng.normal(0, 12, (size, size, 3))
    background = np.clip(0.35 * tint + 0.65 * 128 + noise, 0, 255).astype(np.uint8)
    canvas = Image.fromarray(background)
    draw = ImageDraw.Draw(canvas)
    shapes: list[tuple[int, np.ndarray, int]] = []  # category, visible mask, full area
    for _ in range(int(rng.integers(1, 5))):
        category = int(rng.integers(len(SHAPE_CATEGORIES)))
        extent = int(rng.integers(size // 8, size // 2))
        x0, y0 = (int(v) for v in rng.integers(0, size - extent, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape_mask = Image.new("L", (size, size), 0)
        mask_draw = ImageDraw.Draw(shape_mask)
        box = (x0, y0, x0 + extent - 1, y0 + extent - 1)
        for target, fill in ((draw, colour), (mask_draw, 1)):
            if category == 0:
                target.ellipse(box, fill=fill)
            elif category == 1:
                target.rectangle(box, fill=fill)
            else:
                apex = (x0 + extent // 2, y0)
                target.polygon(
                    [apex, (x0, y0 + extent - 1), (x0 + extent - 1, y0 + extent - 1)], fill=fill
                )
        new = np.asarray(shape_mask, dtype=np.uint8)
        shapes = [(c, m & (1 - new), area) for c, m, area in shapes]
        shapes.append((category, new, int(new.sum())))
    visible = [(c, m) for c, m, area in shapes if m.sum() >= max(1, _MIN_VISIBLE * area)]
    return np.asarray(canvas), visible
