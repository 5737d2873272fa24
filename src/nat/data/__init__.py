"""Datasets and transforms for classification: the embedded digits, image folders, timm datasets."""

from .datasets import DIGITS, create_classification_dataset, dataset_classes
from .digits import DIGITS_CLASSES, DigitsDataset
from .images import ImageFolderDataset, UnreadableImageError
from .transforms import create_eval_transform, create_train_transform

__all__ = [
    "DIGITS",
    "DIGITS_CLASSES",
    "DigitsDataset",
    "ImageFolderDataset",
    "UnreadableImageError",
    "create_classification_dataset",
    "create_eval_transform",
    "create_train_transform",
    "dataset_classes",
]
