"""Training settings: one dataclass, named YAML recipes (package data in ``configs/`` next to this
module), plain-data round trip.

A config is stored in every checkpoint as a plain dict (loadable with ``weights_only=True``) and
resumed runs take their settings from there.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TrainConfig", "config_dir", "list_configs", "load_config"]


@dataclass
class TrainConfig:
    """Everything that decides a training run. Learning rates are per ``lr_batch_size`` images
    and scale linearly with the global batch (``batch_size * world size * grad_accum``)."""

    model: str = "nat_digits"
    data: str | None = None
    dataset: str = ""
    output: str | None = None
    num_classes: int | None = None
    pretrained: bool = False
    initial_checkpoint: str | None = None
    # schedule
    epochs: int = 40
    batch_size: int = 64
    grad_accum: int = 1
    opt: str = "adamw"
    lr: float = 1e-3
    lr_batch_size: int = 1024
    weight_decay: float = 0.05
    opt_eps: float = 1e-8
    opt_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    clip_grad: float | None = 5.0
    sched: str = "cosine"
    warmup_epochs: int = 20
    warmup_lr: float = 1e-6
    min_lr: float = 5e-6
    cooldown_epochs: int = 0
    # model regularisation
    drop_path: float | None = None
    drop_rate: float | None = None
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    # data and augmentation
    input_size: int | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    color_jitter: float = 0.4
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    train_interpolation: str | None = "random"
    re_prob: float = 0.25
    re_mode: str = "pixel"
    re_count: int = 1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.1
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    skip_bad_images: bool = False
    # runtime
    amp: str = "auto"
    workers: int = 4
    threads: int | None = None
    seed: int = 0
    device: str | None = None
    eval_batch_size: int | None = None

    def replace(self, **changes: Any) -> TrainConfig:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str/int/float/bool/None/list) for checkpoints and JSON."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return cls().replace(**values)


def config_dir() -> Path:
    """Where named configs live: ``$NAT_CONFIG_DIR``, else the recipes shipped in the package."""
    env = os.environ.get("NAT_CONFIG_DIR")
    if env:
        return Path(env)
    return Path(__file__).with_name("configs")


def list_configs() -> list[str]:
    return sorted(p.stem for p in config_dir().glob("*.yaml"))


def load_config(name_or_path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file or a named recipe (``"nat_tiny"``), with overrides
    (``None`` values are ignored, so unset command-line flags keep the recipe's value)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = config_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise FileNotFoundError(
                f"no config {str(name_or_path)!r}; named configs: {', '.join(list_configs())}"
            )
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"config {str(path)!r} must be a mapping of setting: value")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)
