"""Segmentation training settings: one dataclass, named YAML recipes (package data in
``configs/``), a plain-data round trip stored in every checkpoint.

Training counts iterations (optimizer updates), as the paper's 160k: every ``eval_interval``
iterations the model is evaluated and a checkpoint written (the engine's epoch).
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

from ...engine import AMP_MODES
from .inference import MODES

__all__ = ["SegmentConfig", "list_configs", "load_config"]


@dataclass
class SegmentConfig:
    """Everything that decides a segmentation run (defaults: the paper's UPerNet recipe)."""

    backbone: str = "nat_tiny"
    backbone_args: dict[str, Any] | None = None
    """Architecture overrides passed to ``timm.create_model`` (e.g. a smaller ``embed_dim``)."""
    pretrained: bool = False
    initial_checkpoint: str | None = None
    channels: int = 512
    aux_channels: int = 256
    aux_weight: float = 0.4
    dropout: float = 0.1
    drop_path: float | None = None
    data: str | None = None
    """An ADE20K or mask-folder root; ``None``: the synthetic scenes."""
    output: str | None = None
    # schedule
    iterations: int = 160_000
    eval_interval: int = 16_000
    batch_size: int = 2
    lr: float = 6e-5
    opt_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    min_lr: float = 0.0
    clip_grad: float | None = None
    # data
    scale: list[int] = field(default_factory=lambda: [2048, 512])
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    crop_size: int = 512
    cat_max_ratio: float = 0.75
    flip: float = 0.5
    photometric: bool = True
    eval_mode: str = "whole"
    synthetic_size: int = 64
    synthetic_train: int = 160
    synthetic_val: int = 40
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    # runtime
    amp: str = "auto"
    workers: int = 4
    threads: int | None = None
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        _check(self)

    def replace(self, **changes: Any) -> SegmentConfig:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown segmentation setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SegmentConfig:
        return cls().replace(**values)


_RULES: dict[str, tuple[Any, str]] = {
    "channels": (lambda v: v >= 1, ">= 1"),
    "aux_channels": (lambda v: v >= 1, ">= 1"),
    "aux_weight": (lambda v: v >= 0, ">= 0"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "drop_path": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "iterations": (lambda v: v >= 1, ">= 1"),
    "eval_interval": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "warmup_iters": (lambda v: v >= 0, ">= 0"),
    "warmup_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "power": (lambda v: v > 0, "> 0"),
    "min_lr": (lambda v: v >= 0, ">= 0"),
    "clip_grad": (lambda v: v > 0, "> 0"),
    "crop_size": (lambda v: v >= 32, ">= 32"),
    "cat_max_ratio": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "flip": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "eval_mode": (lambda v: v in MODES, f"one of {', '.join(MODES)}"),
    "synthetic_size": (lambda v: v >= 32, ">= 32"),
    "synthetic_train": (lambda v: v >= 1, ">= 1"),
    "synthetic_val": (lambda v: v >= 1, ">= 1"),
    "max_train_samples": (lambda v: v >= 1, ">= 1"),
    "max_val_samples": (lambda v: v >= 1, ">= 1"),
    "amp": (lambda v: v in AMP_MODES, f"one of {', '.join(AMP_MODES)}"),
    "workers": (lambda v: v >= 0, ">= 0"),
    "threads": (lambda v: v >= 1, ">= 1"),
    "seed": (lambda v: v >= 0, ">= 0"),
}
_PAIRS: dict[str, tuple[Any, str]] = {
    "opt_betas": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "scale": (lambda v: v >= 1, ">= 1"),
    "ratio_range": (lambda v: v > 0, "> 0"),
}


def _check(config: SegmentConfig) -> None:
    """Refuse a setting of the wrong type or out of its range, naming it, its value and the rule."""
    hints = get_type_hints(SegmentConfig)
    for f in fields(config):
        value = getattr(config, f.name)
        _check_type(f.name, value, hints[f.name])
        if value is None:
            continue
        if f.name in _RULES:
            ok, rule = _RULES[f.name]
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"setting {f.name}={value!r} must be a finite number {rule}")
            if not ok(value):
                raise ValueError(f"setting {f.name}={value!r} must be {rule}")
        if f.name in _PAIRS:
            ok, rule = _PAIRS[f.name]
            if len(value) != 2 or not all(math.isfinite(v) and ok(v) for v in value):
                raise ValueError(f"setting {f.name}={value!r} must be two numbers {rule}")
    if config.ratio_range[0] > config.ratio_range[1]:
        raise ValueError(f"setting ratio_range={config.ratio_range!r} must be [low, high]")
    if config.iterations % config.eval_interval:
        raise ValueError(
            f"setting iterations={config.iterations} must be a multiple of "
            f"eval_interval={config.eval_interval}"
        )
    if not config.backbone:
        raise ValueError("setting backbone='' must name a timm model")


def _check_type(name: str, value: Any, hint: Any) -> None:
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return
        raise ValueError(f"setting {name}=None needs a value")
    for option in options:
        origin = get_origin(option)
        if origin is list:
            (item,) = get_args(option)
            if isinstance(value, list | tuple) and all(_is(v, item) for v in value):
                return
        elif origin is dict:
            if isinstance(value, dict) and all(isinstance(k, str) for k in value):
                return
        elif option is not type(None) and _is(value, option):
            return
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    kind = " or ".join(
        kinds.get(o, "a list" if get_origin(o) is list else "a mapping")
        for o in options
        if o is not type(None)
    )
    raise ValueError(f"setting {name}={value!r} must be {kind}")


def _is(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def config_dir() -> Path:
    return Path(__file__).with_name("configs")


def list_configs() -> list[str]:
    return sorted(p.stem for p in config_dir().glob("*.yaml"))


def load_config(name_or_path: str | os.PathLike[str], **overrides: Any) -> SegmentConfig:
    """A :class:`SegmentConfig` from a YAML file or a named recipe (``"upernet_nat_tiny"``), with
    overrides (``None`` values are ignored)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = config_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise FileNotFoundError(
                f"no config {str(name_or_path)!r}; named configs: {', '.join(list_configs())}"
            )
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"config {str(path)!r} is not valid YAML{where}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config {str(path)!r} must be a mapping of setting: value")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SegmentConfig.from_dict(values)
