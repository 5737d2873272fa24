"""One entry point for classification data: the embedded digits, image folders, timm datasets."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .digits import DigitsDataset
from .images import ImageFolderDataset

__all__ = [
    "DIGITS",
    "check_classes",
    "create_classification_dataset",
    "dataset_classes",
    "is_digits",
]

DIGITS = "digits"

_SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation", "test")}


def is_digits(data: str | os.PathLike[str] | None, dataset: str = "") -> bool:
    """Whether ``data`` (with ``dataset``) names the embedded digits: no data, or ``"digits"``."""
    return data is None or (str(data) == DIGITS and not dataset)


def create_classification_dataset(
    data: str | Path | None,
    split: str,
    *,
    dataset: str = "",
    transform: Callable | None = None,
    skip_bad_images: bool = False,
    image_size: int = 32,
    download: bool = False,
) -> Dataset:
    """The ``split`` (``"train"`` or ``"val"``) of a classification dataset, yielding
    ``(transform(image), class index)``.

    - ``data`` ``None`` or ``"digits"``: the embedded digits (``image_size`` square); ``val`` is
      its fixed 20% test split.
    - ``dataset`` set (e.g. ``"torch/cifar10"``, ``"hfds/..."``): timm's ``create_dataset`` with
      ``root=data``.
    - otherwise ``data`` is a folder in ImageFolder layout: ``data/train/<class>/...`` and
      ``data/val/<class>/...`` (``validation``/``test`` also accepted), or ``data/<class>/...``
      itself when it has no split folders.

    ``skip_bad_images``: an unreadable image is replaced by the next readable one in the train
    split (batch sizes stay), and left out in the val split (counts cover readable images only);
    without it, an unreadable image is an error naming the file.
    """
    if split not in _SPLIT_DIRS:
        raise ValueError(f"split={split!r} must be 'train' or 'val'")
    if is_digits(data, dataset):
        return DigitsDataset(split, image_size=image_size, transform=transform)
    if dataset:
        from timm.data import create_dataset

        ds = create_dataset(
            dataset,
            root=str(data),
            split="train" if split == "train" else "validation",
            is_training=split == "train",
            download=download,
        )
        ds.transform = transform
        return ds
    policy = "error" if not skip_bad_images else "replace" if split == "train" else "skip"
    return ImageFolderDataset(_split_dir(Path(data), split), transform=transform, bad_images=policy)


def dataset_classes(dataset: Dataset) -> list[str] | None:
    """The class names of a dataset built by :func:`create_classification_dataset`, if known."""
    classes: Any = getattr(dataset, "classes", None)
    if classes is None and hasattr(dataset, "reader"):
        mapping = getattr(dataset.reader, "class_to_idx", None)
        if mapping:
            classes = sorted(mapping, key=mapping.get)
    return [str(c) for c in classes] if classes is not None else None


def check_classes(expected: Sequence[str], found: Sequence[str], what: str) -> None:
    """Refuse ``found`` class names that are not ``expected`` in the same order (class indices
    would silently mean other classes); the error names the classes that differ.

    ``what`` says whose classes are compared, e.g. ``"val/ against train/"``.
    """
    if list(found) == list(expected):
        return
    extra = [c for c in found if c not in set(expected)]
    missing = [c for c in expected if c not in set(found)]
    parts = [f"{len(found)} classes vs {len(expected)}"]
    if extra:
        parts.append(f"not expected: {_listed(extra)}")
    if missing:
        parts.append(f"missing: {_listed(missing)}")
    if not extra and not missing:
        parts.append("same names in another order")
    raise ValueError(f"class mismatch, {what}: " + "; ".join(parts))


def _listed(names: Sequence[str], shown: int = 10) -> str:
    more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _split_dir(root: Path, split: str) -> Path:
    if not root.exists():
        raise FileNotFoundError(f"data directory {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"data path {str(root)!r} is not a directory")
    for name in _SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    other = "val" if split == "train" else "train"
    if any((root / name).is_dir() for name in _SPLIT_DIRS[other]):
        raise FileNotFoundError(
            f"data directory {str(root)!r} has no {'/'.join(_SPLIT_DIRS[split])} folder"
        )
    return root
