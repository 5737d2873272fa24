"""The embedded dataset: scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes).

The images ship inside the scikit-learn wheel, so nothing is downloaded. They are upscaled to RGB
PIL images (bicubic) and split 80/20, stratified by class, with a fixed seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["DIGITS_CLASSES", "DigitsDataset"]

DIGITS_CLASSES = tuple(str(i) for i in range(10))

_SPLITS = ("train", "test")


class DigitsDataset(Dataset):
    """One split of scikit-learn's digits as ``(PIL RGB image [size x size], label)`` pairs.

    ``split`` is ``"train"`` (80%) or ``"test"`` (20%, also accepted as ``"val"``/``"validation"``);
    the split is stratified and fixed by ``split_seed``.
    """

    classes = DIGITS_CLASSES

    def __init__(
        self,
        split: str = "train",
        image_size: int = 32,
        transform: Callable[[Image.Image], Any] | None = None,
        split_seed: int = 0,
        test_fraction: float = 0.2,
    ) -> None:
        split = {"val": "test", "validation": "test"}.get(split, split)
        if split not in _SPLITS:
            raise ValueError(f"digits split={split!r} must be one of train, test (or val)")
        if image_size < 8:
            raise ValueError(f"digits image_size={image_size} must be at least 8 (the source size)")
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        train_idx, test_idx = train_test_split(
            np.arange(len(digits.target)),
            test_size=test_fraction,
            stratify=digits.target,
            random_state=split_seed,
        )
        idx = np.sort(train_idx if split == "train" else test_idx)
        pixels = np.clip(np.rint(digits.images[idx] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        self.images = [
            Image.fromarray(p, mode="L")
            .resize((image_size, image_size), Image.BICUBIC)
            .convert("RGB")
            for p in pixels
        ]
        self.targets = [int(t) for t in digits.target[idx]]
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]
