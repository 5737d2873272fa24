"""UPerNet weights: this package's training checkpoints, and mmsegmentation's (the published
UPerNet-NAT checkpoints), whose keys map one to one onto the model's.

mmsegmentation (``EncoderDecoder`` with ``UPerHead`` and ``FCNHead``) -> this model:

- ``backbone.*`` -> ``encoder.model.*`` (the NAT backbone's own keys);
- ``decode_head.psp_modules.{i}.1.{conv,bn}`` -> ``decoder.psp.blocks.{i}.1.{0,1}``;
- ``decode_head.bottleneck`` -> ``decoder.psp.out_conv``;
- ``decode_head.lateral_convs.{i}`` -> ``decoder.fpn_lateral_blocks.{L-2-i}.conv_norm_relu``
  and ``decode_head.fpn_convs.{i}`` -> ``decoder.fpn_conv_blocks.{L-2-i}`` (smp counts the FPN
  levels from the top down, mmsegmentation from the bottom up; ``L`` levels);
- ``decode_head.fpn_bottleneck`` -> ``decoder.fusion_block``;
- ``decode_head.conv_seg`` -> ``classifier``;
- ``auxiliary_head.convs.0`` -> ``aux_head.conv`` and ``auxiliary_head.conv_seg`` ->
  ``aux_head.classifier``;

where each ``ConvModule``'s ``conv``/``bn`` are smp's ``Conv2dReLU`` ``0``/``1``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from ...engine import CheckpointError, load_checkpoint
from ...models import load_state_dict_strict
from ...models.formats import unwrap
from .model import UPerNet

__all__ = ["TRAIN_CHECKPOINT_FORMAT", "from_mmseg", "is_mmseg", "load_upernet_weights", "to_mmseg"]

TRAIN_CHECKPOINT_FORMAT = "nat-segmentation-train-v1"
_CONV_MODULE = {"conv": "0", "bn": "1"}


_POOL_SCALES = 4  # smp's pyramid pooling: 1, 2, 3, 6


def _prefixes(levels: int) -> list[tuple[str, str, bool]]:
    """(mmsegmentation prefix, ours, whether it is a ConvModule) for every module."""
    pairs = [
        ("backbone", "encoder.model", False),
        ("decode_head.bottleneck", "decoder.psp.out_conv", True),
        ("decode_head.fpn_bottleneck", "decoder.fusion_block", True),
        ("decode_head.conv_seg", "classifier", False),
        ("auxiliary_head.convs.0", "aux_head.conv", True),
        ("auxiliary_head.conv_seg", "aux_head.classifier", False),
    ]
    pairs += [
        (f"decode_head.psp_modules.{i}.1", f"decoder.psp.blocks.{i}.1", True)
        for i in range(_POOL_SCALES)
    ]
    for i in range(levels - 1):
        top_down = levels - 2 - i
        pairs.append(
            (
                f"decode_head.lateral_convs.{i}",
                f"decoder.fpn_lateral_blocks.{top_down}.conv_norm_relu",
                True,
            )
        )
        pairs.append((f"decode_head.fpn_convs.{i}", f"decoder.fpn_conv_blocks.{top_down}", True))
    return pairs


def _convert(
    state_dict: Mapping[str, torch.Tensor], levels: int, *, to_ours: bool
) -> dict[str, torch.Tensor]:
    table = [
        (theirs, ours, conv) if to_ours else (ours, theirs, conv)
        for theirs, ours, conv in _prefixes(levels)
    ]
    layer_names = _CONV_MODULE if to_ours else {v: k for k, v in _CONV_MODULE.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = next(((s, t, c) for s, t, c in table if key.startswith(f"{s}.")), None)
        if match is None:
            side = "an mmsegmentation" if to_ours else "this package's"
            raise CheckpointError(f"key {key!r} is not {side} UPerNet key")
        source, target, conv_module = match
        rest = key[len(source) + 1 :]
        if conv_module:
            layer, _, tail = rest.partition(".")
            if layer not in layer_names:
                raise CheckpointError(f"key {key!r} is not a conv/bn entry of a ConvModule")
            rest = f"{layer_names[layer]}.{tail}"
        out[f"{target}.{rest}"] = value
    return out


def from_mmseg(state_dict: Mapping[str, torch.Tensor], levels: int = 4) -> dict[str, torch.Tensor]:
    """An mmsegmentation UPerNet state dict in this model's keys."""
    return _convert(state_dict, levels, to_ours=True)


def to_mmseg(state_dict: Mapping[str, torch.Tensor], levels: int = 4) -> dict[str, torch.Tensor]:
    """This model's state dict in mmsegmentation's keys (:func:`from_mmseg` inverted)."""
    return _convert(state_dict, levels, to_ours=False)


def is_mmseg(state_dict: Mapping[str, Any]) -> bool:
    return any(k.startswith("decode_head.") for k in state_dict)


def load_upernet_weights(
    model: UPerNet, checkpoint: str | os.PathLike[str], *, state: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Load a training checkpoint of this package or an mmsegmentation checkpoint (``meta`` +
    ``state_dict``, or a bare state dict) into ``model`` strictly: any missing or unexpected key
    or shape mismatch is one :class:`~nat.files.CheckpointError`. Returns the file's dict."""
    if state is None:
        state = load_checkpoint(checkpoint)
    source = f"checkpoint {str(checkpoint)!r}"
    if state.get("format") == TRAIN_CHECKPOINT_FORMAT:
        weights = state["model"]
    else:
        weights = unwrap(state)
        if not is_mmseg(weights):
            raise CheckpointError(
                f"{source} is neither a nat segment training checkpoint nor an mmsegmentation "
                f"UPerNet checkpoint (no decode_head.* keys)"
            )
        weights = from_mmseg(weights, model.levels)
        if model.aux_head is None:
            weights = {k: v for k, v in weights.items() if not k.startswith("aux_head.")}
    load_state_dict_strict(model, weights, source)
    return state
