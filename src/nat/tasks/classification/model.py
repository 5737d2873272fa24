"""Building a classifier by its registered name and loading weights into it with clear errors."""

from __future__ import annotations

import os
from typing import Any

import timm
import torch
from torch import nn

from ... import models
from .checkpoint import CheckpointError, load_checkpoint

__all__ = ["TRAIN_CHECKPOINT_FORMAT", "create_classifier", "load_classifier_weights"]

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
        _load_strict(model, state["model"], checkpoint)
    elif isinstance(model, models.NAT):
        try:
            models.load_pretrained(model, checkpoint)
        except models.CheckpointMismatchError as err:
            raise CheckpointError(
                f"checkpoint {str(checkpoint)!r} does not fit {model_name or 'the model'}: "
                f"{str(err).strip().splitlines()[0][:400]}"
            ) from None
    else:
        _load_strict(model, state.get("state_dict", state.get("model", state)), checkpoint)
    return state


def _load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: Any) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        (k, tuple(state_dict[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) (e.g. {unexpected[0]})")
    if shapes:
        key, theirs, ours = shapes[0]
        problems.append(
            f"{key} has shape {list(theirs)} in the checkpoint, {list(ours)} in the model"
        )
        classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "head")
        if key.startswith(f"{classifier}."):
            problems.append(f"num_classes mismatch: the checkpoint has {theirs[0]} classes")
    if problems:
        raise CheckpointError(
            f"checkpoint {str(source)!r} does not fit the model: " + "; ".join(problems)
        )
    model.load_state_dict(state_dict, strict=True)
