"""Training settings: one dataclass, named YAML recipes (package data in ``configs/`` next to this
module), plain-data round trip.

A config is stored in every checkpoint as a plain dict (loadable with ``weights_only=True``) and
resumed runs take their settings from there.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from ...data import INTERPOLATIONS

__all__ = [
    "TrainConfig",
    "check_settings",
    "config_dir",
    "list_configs",
    "load_config",
    "yaml_problem",
]


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

    def __post_init__(self) -> None:
        check_settings(self)

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


_AMP = ("auto", "none", "bf16", "fp16")
_RE_MODES = ("pixel", "rand", "const")
_MIXUP_MODES = ("batch", "pair", "elem")


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f">= {low}"


def _in(low: float, high: float, closed: str = "[]") -> tuple[Callable[[Any], bool], str]:
    lo_ok = (lambda v: v >= low) if closed[0] == "[" else (lambda v: v > low)
    hi_ok = (lambda v: v <= high) if closed[1] == "]" else (lambda v: v < high)
    return (lambda v: lo_ok(v) and hi_ok(v)), f"in {closed[0]}{low}, {high}{closed[1]}"


def _one_of(options: tuple[str, ...]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in options), f"one of {', '.join(options)}"


_POSITIVE = (lambda v: v > 0, "> 0")
# The range of each setting that has one (a None value, where allowed, means "the default").
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_classes": _at_least(1),
    "epochs": _at_least(1),
    "batch_size": _at_least(1),
    "grad_accum": _at_least(1),
    "lr": _POSITIVE,
    "lr_batch_size": _at_least(1),
    "weight_decay": _at_least(0),
    "opt_eps": _POSITIVE,
    "clip_grad": _POSITIVE,
    "warmup_epochs": _at_least(0),
    "warmup_lr": _at_least(0),
    "min_lr": _at_least(0),
    "cooldown_epochs": _at_least(0),
    "drop_path": _in(0, 1, "[)"),
    "drop_rate": _in(0, 1, "[)"),
    "model_ema_decay": _in(0, 1, "[)"),
    "input_size": _at_least(1),
    "interpolation": _one_of(INTERPOLATIONS),
    "train_interpolation": _one_of((*INTERPOLATIONS, "random")),
    "crop_pct": _in(0, 1, "(]"),
    "hflip": _in(0, 1),
    "color_jitter": _at_least(0),
    "re_prob": _in(0, 1),
    "re_mode": _one_of(_RE_MODES),
    "re_count": _at_least(1),
    "mixup": _at_least(0),
    "cutmix": _at_least(0),
    "mixup_prob": _in(0, 1),
    "mixup_switch_prob": _in(0, 1),
    "mixup_mode": _one_of(_MIXUP_MODES),
    "smoothing": _in(0, 1, "[)"),
    "max_train_samples": _at_least(1),
    "max_val_samples": _at_least(1),
    "amp": _one_of(_AMP),
    "workers": _at_least(0),
    "threads": _at_least(1),
    "seed": _at_least(0),
    "eval_batch_size": _at_least(1),
}
_PAIRS = {"opt_betas": _in(0, 1, "[)"), "scale": _in(0, 1, "(]"), "ratio": _POSITIVE}


def check_settings(config: TrainConfig) -> None:
    """Refuse a setting of the wrong type (``epochs=true``, ``lr='abc'``) or out of its range
    (``epochs=0``, ``lr=inf``), naming the setting, its value and the rule."""
    hints = get_type_hints(TrainConfig)
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
            if f.name != "opt_betas" and value[0] > value[1]:
                raise ValueError(f"setting {f.name}={value!r} must be [low, high]")
    if not config.model:
        raise ValueError("setting model='' must name a model")


def _check_type(name: str, value: Any, hint: Any) -> None:
    """``value`` against the field's annotation (``int``, ``float``, ``str``, ``bool``, their
    lists and optionals); ``bool`` is not taken for a number, an ``int`` is for a ``float``."""
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return
        raise ValueError(f"setting {name}=None needs a value")
    for option in options:
        if option is type(None):
            continue
        if get_origin(option) is list:
            (item,) = get_args(option)
            if isinstance(value, list | tuple) and all(_is(v, item) for v in value):
                return
        elif _is(value, option):
            return
    kind = " or ".join(_kind(o) for o in options if o is not type(None))
    raise ValueError(f"setting {name}={value!r} must be {kind}")


def _is(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def _kind(hint: Any) -> str:
    if get_origin(hint) is list:
        return f"a list of {_kind(get_args(hint)[0])}s"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


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
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config {str(path)!r} is not valid YAML ({yaml_problem(err)})") from None
    if not isinstance(values, dict):
        raise ValueError(f"config {str(path)!r} must be a mapping of setting: value")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML parser error in one line: what is wrong and where."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(err, 'problem', None) or type(err).__name__}{where}"
