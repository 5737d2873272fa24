"""Decoding image files, and image-folder datasets (ImageNet's ``train/``/``val/`` layout) that
name the files they fail on.

:func:`decode_image` is the one way the package reads an image file: 8-bit RGB, with high bit
depths scaled (not clipped) and every failure (a corrupt file, a decompression bomb) one
:class:`UnreadableImageError` naming the file.

timm's ``ImageDataset`` skips unreadable images silently (a log line); here an unreadable image is
an error naming its path, unless the dataset is told what to do with one (``bad_images``):
``"replace"`` it by the next readable one with a warning (for training: batch sizes, Mixup pairs
and DDP shards stay unchanged), or ``"skip"`` it (for evaluation: the sample yields ``None``, which
:func:`drop_skipped` removes from the batch, so counts and accuracy cover only readable images).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from timm.data import ImageDataset
from torch.utils.data import default_collate

__all__ = [
    "BAD_IMAGE_POLICIES",
    "ImageFolderDataset",
    "UnreadableImageError",
    "decode_image",
    "drop_skipped",
]

_logger = logging.getLogger(__name__)

_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
BAD_IMAGE_POLICIES = ("error", "replace", "skip")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_EIGHT_BIT_MAX = 255
_SIXTEEN_BIT_MAX = 65535


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded; the message names the file.

    A DataLoader worker re-raises exceptions in the main process as ``type(err)(formatted
    traceback)``; the constructor keeps only the original one-line message from that text.
    """

    _PREFIX = f"{__qualname__}: "

    def __init__(self, message: str) -> None:
        lines = [line for line in message.strip().splitlines() if self._PREFIX in line]
        if lines:
            message = lines[-1].split(self._PREFIX, 1)[1]
        super().__init__(message)


def decode_image(path: str | os.PathLike[str]) -> Image.Image:
    """The image at ``path`` as 8-bit RGB.

    16-bit grey images (``I;16``) are scaled by 255/65535. For 32-bit integer (``I``) and float
    (``F``) images the range is read from the pixels: floats up to 1.0 are taken as [0, 1], values
    up to 255 as 8-bit, larger ones as 16-bit (clipped at 65535). Raises
    :class:`FileNotFoundError` or :class:`UnreadableImageError` (corrupt, truncated, a
    decompression bomb), naming the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb8(image)
    except _IMAGE_ERRORS as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}") from None


def _to_rgb8(image: Image.Image) -> Image.Image:
    if image.mode not in (*_SIXTEEN_BIT_MODES, "I", "F"):
        return image.convert("RGB")
    pixels = np.asarray(image, dtype=np.float64)
    top = float(pixels.max()) if pixels.size else 0.0
    if image.mode in _SIXTEEN_BIT_MODES or top > _EIGHT_BIT_MAX:
        pixels = pixels * (_EIGHT_BIT_MAX / _SIXTEEN_BIT_MAX)
    elif image.mode == "F" and top <= 1.0:
        pixels = pixels * _EIGHT_BIT_MAX
    grey = np.clip(np.rint(pixels), 0, _EIGHT_BIT_MAX).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def drop_skipped(batch: list[Any]) -> Any:
    """``default_collate`` of the samples that are not ``None`` (skipped unreadable images);
    ``None`` when every sample of the batch was skipped."""
    kept = [sample for sample in batch if sample is not None]
    return default_collate(kept) if kept else None


class ImageFolderDataset(ImageDataset):
    """``root/<class>/<image>`` as ``(PIL RGB image, class index)``; classes sorted by name.

    ``bad_images``: ``"error"`` (default), ``"replace"`` or ``"skip"`` (see the module's doc).
    """

    def __init__(self, root: str | Path, transform=None, bad_images: str = "error") -> None:
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"bad_images={bad_images!r} must be one of {BAD_IMAGE_POLICIES}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
        try:
            super().__init__(str(root), transform=transform)
        except RuntimeError as err:
            raise FileNotFoundError(
                f"no images found in {str(root)!r} (expected {root}/<class>/<image>)"
            ) from err
        self.bad_images = bad_images
        self.classes = sorted(self.reader.class_to_idx, key=self.reader.class_to_idx.get)

    @property
    def targets(self) -> list[int]:
        return [target for _, target in self.reader.samples]

    def filename(self, index: int) -> str:
        return self.reader.filename(index, absolute=True)

    def load(self, index: int) -> Image.Image:
        """The decoded RGB image at ``index``; raises :class:`UnreadableImageError`."""
        return decode_image(self.filename(index))

    def __getitem__(self, index: int):
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                image = self.load(i)
                break
            except UnreadableImageError as err:
                if self.bad_images == "error":
                    raise
                _logger.warning("skipping %s", err)
                if self.bad_images == "skip":
                    return None
        else:
            raise UnreadableImageError(f"no readable image in {self.reader.root}")
        target = self.reader.samples[i][1]
        if self.transform is not None:
            image = self.transform(image)
        return image, target
