"""Classification data: a split's classes and images (the embedded digits rendered at the model's
input size) and the model's data config."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from timm.data import resolve_data_config
from torch import nn
from torch.utils.data import Dataset

from ...data import (
    DIGITS,
    DIGITS_CLASSES,
    create_classification_dataset,
    dataset_classes,
    is_digits,
)

__all__ = ["ImageSplit", "data_config_for"]


def data_config_for(
    model: nn.Module,
    *,
    input_size: int | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, Any]:
    """timm's data config of ``model`` (its pretrained cfg) with the given overrides, as plain
    data (lists, not tuples) so it can be stored in a checkpoint."""
    overrides: dict[str, Any] = {
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "mean": tuple(mean) if mean else None,
        "std": tuple(std) if std else None,
    }
    if input_size:
        overrides["input_size"] = (3, input_size, input_size)
    cfg = resolve_data_config({k: v for k, v in overrides.items() if v is not None}, model=model)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


class ImageSplit:
    """A split of ``data`` (see :func:`nat.data.create_classification_dataset`) whose class names
    are known at once and whose images are opened for a given input size: the embedded digits
    (``data`` ``None`` or ``"digits"``) are rendered at that size, any other data is read as it
    is (and checked to exist here)."""

    def __init__(
        self,
        data: str | os.PathLike[str] | None,
        split: str,
        *,
        dataset: str = "",
        skip_bad_images: bool = False,
    ) -> None:
        self.data, self.split = data, split
        self.name = str(data) if data is not None else DIGITS
        self._images: Dataset | None = None
        if is_digits(data, dataset):
            self.classes: list[str] | None = list(DIGITS_CLASSES)
        else:
            self._images = create_classification_dataset(
                data, split, dataset=dataset, skip_bad_images=skip_bad_images
            )
            self.classes = dataset_classes(self._images)

    def open(self, image_size: int) -> Dataset:
        """The split's dataset (no transform yet)."""
        if self._images is not None:
            return self._images
        return create_classification_dataset(self.data, self.split, image_size=image_size)
