"""Small generated image folders (ImageFolder layout) for data and task tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(
    root: Path, classes: int = 3, per_class: int = 4, size: int = 16, seed: int = 0
) -> Path:
    """``root/c<k>/<i>.png``: class k is a bright square at a class-specific corner, plus noise,
    so a tiny model can learn it."""
    rng = np.random.default_rng(seed)
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            y, x = divmod(k, 2)
            half = size // 2
            pixels[y * half : (y + 1) * half, x * half : (x + 1) * half] += 180
            Image.fromarray(pixels).save(root / f"c{k}" / f"{i}.png")
    return root


def make_split_folder(root: Path, classes: int = 3, train: int = 8, val: int = 4) -> Path:
    """``root/train`` and ``root/val`` image folders."""
    make_image_folder(root / "train", classes, train, seed=0)
    make_image_folder(root / "val", classes, val, seed=1)
    return root


def corrupt(path: Path) -> Path:
    """Truncate an image file to a few bytes so that decoding fails."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def make_ade20k_folder(root: Path, train: int = 4, val: int = 2, size: int = 24) -> Path:
    """ADE20K's layout (``images/{training,validation}``, ``annotations/...``) holding random
    images and masks with labels 0 (ignored) to 150."""
    rng = np.random.default_rng(0)
    for split, count in (("training", train), ("validation", val)):
        for sub in ("images", "annotations"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
            labels = rng.integers(0, 151, (size, size + 8), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / split / f"ADE_{split}_{i:08d}.jpg")
            Image.fromarray(labels, mode="L").save(
                root / "annotations" / split / f"ADE_{split}_{i:08d}.png"
            )
    return root
