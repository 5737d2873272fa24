"""Segmentation transforms on ``(image [H, W, 3] uint8, mask [H, W] uint8)`` pairs, the paper's
(mmsegmentation's) ADE20K pipeline: random rescale of a base scale, random crop with a cap on the
share of one class, flip, photometric distortion, normalisation and padding to the crop size.

Random draws use NumPy's global generator, which the engine seeds and checkpoints (and PyTorch
seeds in each data loader worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .segmentation import IGNORE_INDEX

__all__ = ["SegmentationEval", "SegmentationTrain", "rescale_size"]

_CROP_TRIES = 10


def rescale_size(
    height: int, width: int, scale: Sequence[int], ratio: float = 1.0
) -> tuple[int, int]:
    """The size an image keeps its aspect ratio at while fitting ``scale`` (long, short sides)
    times ``ratio``: ADE20K's (2048, 512) makes the shorter side 512 unless the longer would pass
    2048."""
    long_side, short_side = max(scale) * ratio, min(scale) * ratio
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def _to_tensors(
    image: np.ndarray, mask: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = (image.astype(np.float32) - np.asarray(mean, np.float32) * 255) / (
        np.asarray(std, np.float32) * 255
    )
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy()), torch.from_numpy(
        mask.astype(np.int64)
    )


def _resize(
    image: np.ndarray, mask: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    if image.shape[:2] == size:
        return image, mask
    h, w = size
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
    return image, mask


@dataclass
class SegmentationTrain:
    """Training pipeline: ``(image, mask)`` -> ``(image [3, crop, crop] float, mask [crop, crop]
    int64)`` with padding labelled :data:`~nat.data.segmentation.IGNORE_INDEX`."""

    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: int = 512
    cat_max_ratio: float = 0.75
    flip: float = 0.5
    photometric: bool = True
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        ratio = np.random.uniform(*self.ratio_range)
        image, mask = _resize(image, mask, rescale_size(*mask.shape, self.scale, ratio))
        image, mask = self._crop(image, mask)
        if np.random.rand() < self.flip:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if self.photometric:
            image = photometric_distortion(image)
        image, mask = self._pad(image, mask)
        return _to_tensors(image, mask, self.mean, self.std)

    def _crop(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A random crop in which no class covers more than ``cat_max_ratio`` of the labelled
        pixels (up to 10 tries; the last one is kept)."""
        h, w = mask.shape
        ch, cw = min(self.crop_size, h), min(self.crop_size, w)
        for _ in range(_CROP_TRIES):
            y, x = np.random.randint(0, h - ch + 1), np.random.randint(0, w - cw + 1)
            crop = mask[y : y + ch, x : x + cw]
            if self.cat_max_ratio >= 1:
                break
            _, counts = np.unique(crop[crop != IGNORE_INDEX], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return image[y : y + ch, x : x + cw], mask[y : y + ch, x : x + cw]

    def _pad(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = mask.shape
        if (h, w) == (self.crop_size, self.crop_size):
            return image, mask
        padded_image = np.zeros((self.crop_size, self.crop_size, 3), np.uint8)
        padded_mask = np.full((self.crop_size, self.crop_size), IGNORE_INDEX, np.uint8)
        padded_image[:h, :w], padded_mask[:h, :w] = image, mask
        return padded_image, padded_mask


def photometric_distortion(image: np.ndarray) -> np.ndarray:
    """mmsegmentation's PhotoMetricDistortion: each with probability 1/2, brightness (+-32),
    contrast (x0.5-1.5, before or after the colour changes), saturation (x0.5-1.5), hue
    (+-18 of 180 degrees)."""
    pixels = image.astype(np.float32)
    if np.random.randint(2):
        pixels += np.random.uniform(-32, 32)
    contrast_first = np.random.randint(2)
    contrast = np.random.uniform(0.5, 1.5) if np.random.randint(2) else None
    if contrast is not None and contrast_first:
        pixels *= contrast
    saturation = np.random.uniform(0.5, 1.5) if np.random.randint(2) else None
    hue = np.random.randint(-18, 19) if np.random.randint(2) else None
    if saturation is not None or hue is not None:
        hsv = np.asarray(
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("HSV")
        ).astype(np.float32)
        if saturation is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
        if hue is not None:
            hsv[..., 0] = (hsv[..., 0] + hue * 256 / 180) % 256
        pixels = np.asarray(
            Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")
        ).astype(np.float32)
    if contrast is not None and not contrast_first:
        pixels *= contrast
    return np.clip(pixels, 0, 255).astype(np.uint8)


@dataclass
class SegmentationEval:
    """Evaluation: the image normalised at its own size (inference rescales it per test scale)
    and the mask untouched: ``(image [3, H, W] float, mask [H, W] int64)``."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return _to_tensors(image, mask, self.mean, self.std)
