"""Training and evaluation transforms: timm's ``create_transform`` driven by a data config.

A data config is timm's dict (``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``,
``crop_mode``), normally from ``timm.data.resolve_data_config(model=...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from timm.data import create_transform

__all__ = ["INTERPOLATIONS", "create_eval_transform", "create_train_transform"]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
"""Resampling filters by name; training also takes ``"random"`` (one per image, as in DeiT)."""


def create_train_transform(
    data_config: Mapping[str, Any],
    *,
    scale: Sequence[float] | None = None,
    ratio: Sequence[float] | None = None,
    hflip: float = 0.5,
    color_jitter: float = 0.4,
    auto_augment: str | None = None,
    interpolation: str | None = None,
    re_prob: float = 0.0,
    re_mode: str = "pixel",
    re_count: int = 1,
) -> Callable:
    """Random resized crop, flip, colour jitter or RandAugment, normalise, random erasing.

    ``interpolation`` overrides the config's (``"random"`` picks one per image, as in DeiT).
    ``color_jitter=0`` adds no jitter step (timm would add one that changes nothing but still
    draws a random permutation per image).
    """
    interpolation = interpolation or data_config["interpolation"]
    _check_interpolation(interpolation, (*INTERPOLATIONS, "random"))
    return create_transform(
        data_config["input_size"],
        is_training=True,
        scale=tuple(scale) if scale else None,
        ratio=tuple(ratio) if ratio else None,
        hflip=hflip,
        color_jitter=color_jitter or None,
        auto_augment=auto_augment or None,
        interpolation=interpolation,
        mean=data_config["mean"],
        std=data_config["std"],
        re_prob=re_prob,
        re_mode=re_mode,
        re_count=re_count,
    )


def create_eval_transform(data_config: Mapping[str, Any]) -> Callable:
    """Resize to ``size / crop_pct``, centre crop, normalise (NAT: 224/0.875 bicubic, crop 224)."""
    _check_interpolation(data_config["interpolation"], INTERPOLATIONS)
    crop_pct = data_config["crop_pct"]
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct={crop_pct} must be in (0, 1]")
    return create_transform(
        data_config["input_size"],
        is_training=False,
        interpolation=data_config["interpolation"],
        mean=data_config["mean"],
        std=data_config["std"],
        crop_pct=data_config["crop_pct"],
        crop_mode=data_config.get("crop_mode"),
    )


def _check_interpolation(name: str, allowed: Sequence[str]) -> None:
    if name not in allowed:
        raise ValueError(f"interpolation={name!r} must be one of {', '.join(allowed)}")
