"""Detection training settings: one dataclass, named YAML recipes (package data in ``configs/``),
plain-data round trip (stored in every checkpoint; resumed runs take their settings from there).

The defaults are the paper's COCO 3x schedule (mmdetection's NAT configs); ``configs/shapes.yaml``
is the small synthetic demo that ``nat detect train`` runs without data.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from .model import ARCHITECTURES

__all__ = ["DetectConfig", "list_configs", "load_config"]


@dataclass
class DetectConfig:
    """Everything that decides a detection run. ``lr`` is per ``lr_batch_size`` images and scales
    linearly with the global batch (``batch_size * world size``). ``num_classes`` counts the
    background (``None``: the training set's categories + 1). ``data``: a COCO-layout root
    holding ``train_images``/``train_annotations``/``val_images``/``val_annotations`` (relative
    paths); ``None``: a synthetic shapes dataset generated in the run directory."""

    architecture: str = "mask_rcnn"
    backbone: str = "nat_tiny"
    backbone_args: dict[str, Any] | None = None
    pretrained_backbone: bool = False
    initial_checkpoint: str | None = None
    num_classes: int | None = None
    data: str | None = None
    train_images: str = "train2017"
    train_annotations: str = "annotations/instances_train2017.json"
    val_images: str = "val2017"
    val_annotations: str = "annotations/instances_val2017.json"
    synthetic_images: list[int] = field(default_factory=lambda: [160, 40])
    synthetic_size: int = 128
    output: str | None = None
    # schedule: AdamW, x0.1 steps at the milestones (epochs), linear warm-up (iterations)
    epochs: int = 36
    milestones: list[int] = field(default_factory=lambda: [27, 33])
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    batch_size: int = 2
    lr: float = 1e-4
    lr_batch_size: int = 16
    weight_decay: float = 0.05
    opt_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    clip_grad: float | None = None
    # model size (the paper's; smaller for the demo)
    drop_path: float | None = None
    fpn_channels: int = 256
    representation: int = 1024
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    rpn_train_pre: int = 2000
    rpn_train_post: int = 1000
    rois_per_image: int = 512
    # augmentation (shorter sides) and evaluation resize
    train_scales: list[int] = field(default_factory=lambda: list(range(480, 801, 32)))
    max_size: int = 1333
    crop_scales: list[int] = field(default_factory=lambda: [400, 500, 600])
    crop_range: list[int] = field(default_factory=lambda: [384, 600])
    eval_size: int = 800
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    # runtime
    amp: str = "auto"
    workers: int = 2
    threads: int | None = None
    seed: int = 0
    device: str | None = None
    eval_batch_size: int | None = None

    def __post_init__(self) -> None:
        _check(self)

    def replace(self, **changes: Any) -> DetectConfig:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown detection setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DetectConfig:
        return cls().replace(**values)

    def model_kwargs(self) -> dict[str, Any]:
        """The keywords of :func:`nat.tasks.detection.create_detector` these settings give."""
        backbone_args = dict(self.backbone_args or {})
        if self.drop_path is not None:
            backbone_args["drop_path_rate"] = self.drop_path
        return dict(
            pretrained_backbone=self.pretrained_backbone,
            backbone_args=backbone_args or None,
            fpn_channels=self.fpn_channels,
            representation=self.representation,
            anchor_sizes=tuple(self.anchor_sizes),
            rpn_train_pre=self.rpn_train_pre,
            rpn_train_post=self.rpn_train_post,
            rois_per_image=self.rois_per_image,
            min_size=self.eval_size,
            max_size=self.max_size,
        )


_POSITIVE_INTS = (
    "num_classes", "synthetic_size", "epochs", "batch_size", "lr_batch_size", "fpn_channels",
    "representation", "rpn_train_pre", "rpn_train_post", "rois_per_image", "max_size",
    "eval_size", "max_train_samples", "max_val_samples", "threads", "eval_batch_size",
)  # fmt: skip
_NON_NEGATIVE = ("warmup_iters", "weight_decay", "workers", "seed")
_POSITIVE_LISTS = ("synthetic_images", "milestones", "anchor_sizes", "train_scales", "crop_scales")
_AMP = ("auto", "none", "bf16", "fp16")


def _check(config: DetectConfig) -> None:
    """Refuse a setting of the wrong type or out of its range, naming it, its value and the rule."""
    hints = get_type_hints(DetectConfig)
    for f in fields(config):
        _check_type(f.name, getattr(config, f.name), hints[f.name])

    def bad(name: str, rule: str) -> ValueError:
        return ValueError(f"setting {name}={getattr(config, name)!r} must be {rule}")

    for name in _POSITIVE_INTS:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise bad(name, "an integer >= 1")
    for name in _NON_NEGATIVE:
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise bad(name, ">= 0")
    for name in _POSITIVE_LISTS:
        if not getattr(config, name) or min(getattr(config, name)) < 1:
            raise bad(name, "a non-empty list of integers >= 1")
    for name in ("lr", "clip_grad"):
        value = getattr(config, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise bad(name, "a finite number > 0")
    if not 0 < config.warmup_ratio <= 1:
        raise bad("warmup_ratio", "in (0, 1]")
    if config.drop_path is not None and not 0 <= config.drop_path < 1:
        raise bad("drop_path", "in [0, 1)")
    if len(config.opt_betas) != 2 or not all(0 <= b < 1 for b in config.opt_betas):
        raise bad("opt_betas", "two numbers in [0, 1)")
    if len(config.synthetic_images) != 2:
        raise bad("synthetic_images", "[train images, val images]")
    if len(config.anchor_sizes) != 5:
        raise bad("anchor_sizes", "five sizes, one per FPN level")
    if len(config.crop_range) != 2 or not 1 <= config.crop_range[0] <= config.crop_range[1]:
        raise bad("crop_range", "[low, high] with 1 <= low <= high")
    if config.architecture not in ARCHITECTURES:
        raise bad("architecture", f"one of {', '.join(ARCHITECTURES)}")
    if config.amp not in _AMP:
        raise bad("amp", f"one of {', '.join(_AMP)}")
    if not config.backbone:
        raise bad("backbone", "a model name")


def _check_type(name: str, value: Any, hint: Any) -> None:
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return
        raise ValueError(f"setting {name}=None needs a value")
    for option in options:
        origin = get_origin(option) or option
        if origin is list and isinstance(value, list | tuple):
            (item,) = get_args(option)
            if all(_is(v, item) for v in value):
                return
        elif (origin is dict and isinstance(value, dict)) or (
            origin not in (list, dict, type(None)) and _is(value, origin)
        ):
            return
    raise ValueError(f"setting {name}={value!r} must be of type {hint}".replace("typing.", ""))


def _is(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def _config_dir() -> Path:
    return Path(__file__).with_name("configs")


def list_configs() -> list[str]:
    return sorted(p.stem for p in _config_dir().glob("*.yaml"))


def load_config(name_or_path: str | os.PathLike[str], **overrides: Any) -> DetectConfig:
    """A :class:`DetectConfig` from a YAML file or a named recipe (``"shapes"``, ``"coco_3x"``),
    with overrides (``None`` values are ignored)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = _config_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise FileNotFoundError(
                f"no detection config {str(name_or_path)!r}; named configs: "
                f"{', '.join(list_configs())}"
            )
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config {str(path)!r} is not valid YAML ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(f"config {str(path)!r} must be a mapping of setting: value")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return DetectConfig.from_dict(values)
