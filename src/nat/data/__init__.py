"""Datasets and transforms for classification: the embedded digits, image folders, timm datasets."""

from .datasets import (
    DIGITS,
    check_classes,
    create_classification_dataset,
    dataset_classes,
    is_digits,
)
from .digits import DIGITS_CLASSES, DigitsDataset
from .images import (
    BAD_IMAGE_POLICIES,
    ImageFolderDataset,
    UnreadableImageError,
    decode_image,
    drop_skipped,
)
from .transforms import INTERPOLATIONS, create_eval_transform, create_train_transform

__all__ = [
    "BAD_IMAGE_POLICIES",
    "DIGITS",
    "DIGITS_CLASSES",
    "INTERPOLATIONS",
    "DigitsDataset",
    "ImageFolderDataset",
    "UnreadableImageError",
    "check_classes",
    "create_classification_dataset",
    "create_eval_transform",
    "create_train_transform",
    "dataset_classes",
    "decode_image",
    "drop_skipped",
    "is_digits",
]
