"""Image-folder datasets (ImageNet's ``train/``/``val/`` layout) that name the files they fail on.

timm's ``ImageDataset`` skips unreadable images silently (a log line); here an unreadable image is
an error naming its path, unless ``skip_bad_images`` is set, when it is replaced by the next
readable one with a warning, keeping batch sizes (and so Mixup pairs and DDP shards) unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image
from timm.data import ImageDataset

__all__ = ["ImageFolderDataset", "UnreadableImageError"]

_logger = logging.getLogger(__name__)

_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


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


class ImageFolderDataset(ImageDataset):
    """``root/<class>/<image>`` as ``(PIL RGB image, class index)``; classes sorted by name."""

    def __init__(self, root: str | Path, transform=None, skip_bad_images: bool = False) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
        try:
            super().__init__(str(root), transform=transform)
        except RuntimeError as err:
            raise FileNotFoundError(
                f"no images found in {str(root)!r} (expected {root}/<class>/<image>)"
            ) from err
        self.skip_bad_images = skip_bad_images
        self.classes = sorted(self.reader.class_to_idx, key=self.reader.class_to_idx.get)

    @property
    def targets(self) -> list[int]:
        return [target for _, target in self.reader.samples]

    def filename(self, index: int) -> str:
        return self.reader.filename(index, absolute=True)

    def load(self, index: int) -> Image.Image:
        """The decoded RGB image at ``index``; raises :class:`UnreadableImageError`."""
        path = self.filename(index)
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except _IMAGE_ERRORS as err:
            raise UnreadableImageError(f"cannot read image {path}: {err}") from None

    def __getitem__(self, index: int):
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                image = self.load(i)
                break
            except UnreadableImageError as err:
                if not self.skip_bad_images:
                    raise
                _logger.warning("skipping %s", err)
        else:
            raise UnreadableImageError(f"no readable image in {self.reader.root}")
        target = self.reader.samples[i][1]
        if self.transform is not None:
            image = self.transform(image)
        return image, target
