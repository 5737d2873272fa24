"""Building a classifier by its registered name and loading weights into it with clear errors;
:func:`load_classifier`: the one path from a checkpoint to a ready model (validate, predict)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import timm
from torch import nn

from ... import models
from ...engine import CheckpointError, load_checkpoint
from .loaders import data_config_for

__all__ = [
    "TRAIN_CHECKPOINT_FORMAT",
    "LoadedClassifier",
    "create_classifier",
    "load_classifier",
    "load_classifier_weights",
]

TRAIN_CHECKPOINT_FORMAT = "nat-classification-train-v1"


def create_classifier(
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: bool = False,
    drop_path_rate: float | None = None,
    drop_rate: float | None = None,
) -> nn.Module:
    """``timm.create_model(name, ...)`` for any registered model (NAT/DiNAT register on import);
    unset options keep the variant's defaults."""
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}")
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if drop_rate is not None:
        kwargs["drop_rate"] = drop_rate
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def load_classifier_weights(
    model: nn.Module,
    checkpoint: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load weights from ``checkpoint`` into ``model`` strictly and return the checkpoint dict.

    Training checkpoints of this package (``model`` plus ``config``) load directly and are checked
    to be of ``model_name``; other files go through :func:`nat.models.load_pretrained` for NAT/DiNAT
    (it detects the published, mm*, Hugging Face and safetensors layouts), else load as a state
    dict (bare or under ``state_dict``/``model``). A missing or extra key or a shape mismatch
    (e.g. another ``num_classes``) raises :class:`CheckpointError` with a one-line summary.
    ``state``: the file's contents when already loaded.
    """
    if state is None:
        state = load_checkpoint(checkpoint)
    if state.get("format") == TRAIN_CHECKPOINT_FORMAT:
        trained = state["config"]["model"]
        if model_name is not None and trained != model_name:
            raise CheckpointError(
                f"checkpoint {str(checkpoint)!r} holds a {trained} model, not {model_name}"
            )
        models.load_state_dict_strict(model, state["model"], f"checkpoint {str(checkpoint)!r}")
    elif isinstance(model, models.NAT):
        models.load_pretrained(model, checkpoint)
    else:
        weights = state.get("state_dict", state.get("model", state))
        models.load_state_dict_strict(model, weights, f"checkpoint {str(checkpoint)!r}")
    return state


@dataclass
class LoadedClassifier:
    model: nn.Module
    classes: list[str] | None = None
    """The class names a training checkpoint of this package carries."""
    data_config: dict[str, Any] = field(default_factory=dict)
    """The data config a training checkpoint was trained with (input size, crop, mean, ...)."""

    def eval_data_config(
        self,
        *,
        input_size: int | None = None,
        interpolation: str | None = None,
        crop_pct: float | None = None,
    ) -> dict[str, Any]:
        """The model's data config: the given overrides, else the trained one, else timm's."""
        saved = self.data_config
        return data_config_for(
            self.model,
            input_size=input_size or (saved.get("input_size") or [None])[-1],
            interpolation=interpolation or saved.get("interpolation"),
            crop_pct=crop_pct or saved.get("crop_pct"),
            mean=saved.get("mean"),
            std=saved.get("std"),
        )


def load_classifier(
    model_name: str,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    num_classes: int | None = None,
    pretrained: bool = False,
) -> LoadedClassifier:
    """``model_name`` with the weights of ``checkpoint`` (any layout
    :func:`load_classifier_weights` reads), else timm's pretrained weights if ``pretrained``.
    A training checkpoint of this package also gives the number of classes (unless
    ``num_classes`` is set, which must then fit), their names and the data config."""
    state = load_checkpoint(checkpoint) if checkpoint is not None else {}
    ours = state.get("format") == TRAIN_CHECKPOINT_FORMAT
    if num_classes is None and ours:
        num_classes = len(state["classes"])
    model = create_classifier(model_name, num_classes=num_classes, pretrained=pretrained)
    if checkpoint is not None:
        load_classifier_weights(model, checkpoint, model_name=model_name, state=state)
    if not ours:
        return LoadedClassifier(model)
    return LoadedClassifier(model, list(state["classes"]), dict(state.get("data_config") or {}))
