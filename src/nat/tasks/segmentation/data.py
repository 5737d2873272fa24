"""The data of a segmentation run: its splits (a folder, or the synthetic scenes) and their
training and evaluation transforms."""

from __future__ import annotations

from collections.abc import Sequence

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from ...data.segmentation import SYNTHETIC, SegmentationFolder, SyntheticScenes
from ...data.segmentation_transforms import SegmentationEval, SegmentationTrain
from .config import SegmentConfig
from .inference import MULTI_SCALE_RATIOS, EvalProtocol

__all__ = ["eval_protocol", "eval_transform", "open_split", "train_transform"]


def open_split(config: SegmentConfig, split: str) -> tuple[Dataset, list[str], str]:
    """``(dataset without transform, class names, data name)`` of ``config.data``'s ``split``
    (the synthetic scenes when ``config.data`` is ``None``)."""
    if config.data is None or config.data == SYNTHETIC:
        count = config.synthetic_train if split == "train" else config.synthetic_val
        scenes = SyntheticScenes(split, size=config.synthetic_size, count=count)
        return scenes, list(scenes.classes), SYNTHETIC
    folder = SegmentationFolder(config.data, split)
    return folder, folder.classes, str(config.data)


def train_transform(config: SegmentConfig) -> SegmentationTrain:
    return SegmentationTrain(
        scale=tuple(config.scale),
        ratio_range=tuple(config.ratio_range),
        crop_size=config.crop_size,
        cat_max_ratio=config.cat_max_ratio,
        flip=config.flip,
        photometric=config.photometric,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
    )


def eval_transform() -> SegmentationEval:
    return SegmentationEval(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)


def eval_protocol(
    config: SegmentConfig,
    *,
    multi_scale: bool = False,
    flip: bool = False,
    mode: str | None = None,
    scale: Sequence[int] | None = None,
) -> EvalProtocol:
    """The paper's test: ``scale`` or ``config.scale`` (ADE20K: shorter side 512), whole image;
    multi-scale: ratios 0.5-1.75; sliding windows of the crop size at two thirds of it."""
    if scale is not None and (len(scale) != 2 or min(scale) < 1):
        raise ValueError(f"scale={list(scale)} must be two sizes >= 1 (long side, short side)")
    return EvalProtocol(
        scale=tuple(scale or config.scale),
        ratios=MULTI_SCALE_RATIOS if multi_scale else (1.0,),
        flip=flip,
        mode=mode or config.eval_mode,
        crop_size=config.crop_size,
        stride=max(1, config.crop_size * 2 // 3),
    )
