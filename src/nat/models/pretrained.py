"""Loading checkpoints into models, building models from checkpoints, converting checkpoints.

:func:`load_pretrained` takes any format :mod:`.formats` reads, adapts the usual differences the
way timm does (another ``num_classes`` drops the head with a warning; another ``in_chans`` adapts
the first convolution; a classification checkpoint feeds a backbone without its ``norm``/``head``)
and otherwise checks strictly (:func:`load_state_dict_strict`): a missing or unexpected key or a
shape mismatch raises one line of :class:`~nat.files.CheckpointError` with the counts and first
examples. A failed download of published weights raises :class:`PretrainedDownloadError`.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from ..files import CheckpointError
from . import formats
from .nat import NAT, NATBackbone

__all__ = [
    "LoadResult",
    "PretrainedDownloadError",
    "convert_checkpoint",
    "fit_state_dict",
    "identify_variant",
    "load_model",
    "load_pretrained",
    "load_state_dict_strict",
    "model_args",
]

_logger = logging.getLogger(__name__)

_BACKBONE_NORM = re.compile(r"^norm\d+\.")
_CLASSIFIER_ONLY = ("norm.", "head.")
_FIRST_CONV = "patch_embed.proj.0.weight"
_SHOWN = 5
LAYOUTS = ("original", "hf")
"""The layouts :func:`convert_checkpoint` writes."""


def _variants() -> list[str]:
    return timm.list_models(["nat_*", "dinat_*"])


def _output_levels(state_dict: Mapping[str, Any]) -> list[int]:
    """The levels a backbone checkpoint has ``norm{i}`` layers for."""
    return sorted({int(k[4:].split(".")[0]) for k in state_dict if _BACKBONE_NORM.match(k)})


def _differences(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    allowed_missing: set[str] = frozenset(),
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, shape-mismatched) keys of ``state_dict`` against ``expected``."""
    missing = [k for k in expected if k not in state_dict and k not in allowed_missing]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        k for k in state_dict if k in expected and tuple(state_dict[k].shape) != expected[k]
    ]
    return missing, unexpected, mismatched


class PretrainedDownloadError(RuntimeError):
    """Published weights could not be downloaded (no network, a refused or broken transfer)."""

    @classmethod
    def for_variant(
        cls, variant: str, model_kwargs: Mapping[str, Any], err: BaseException
    ) -> PretrainedDownloadError:
        """The one-line error for ``timm.create_model(variant, pretrained=True, **kwargs)``."""
        cfg = timm.models.resolve_pretrained_cfg(
            variant,
            pretrained_cfg=model_kwargs.get("pretrained_cfg"),
            pretrained_cfg_overlay=model_kwargs.get("pretrained_cfg_overlay"),
        )
        where = cfg.url or cfg.hf_hub_id or "its pretrained source"
        reason = getattr(err, "reason", None) or err
        name = Path(cfg.url).name if cfg.url else f"{variant}.pth"
        return cls(
            f"pretrained weights for {variant} could not be downloaded from {where} ({reason}); "
            f"without network, fetch the file elsewhere and pass it with "
            f"pretrained_cfg_overlay=dict(file='/path/to/{name}')"
        )


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load ``state_dict`` into ``model`` if its keys and shapes are exactly the model's.

    Otherwise raise one line of :class:`~nat.files.CheckpointError` naming ``source``, the
    counts of shape mismatches, missing and unexpected keys and their first examples, and, when
    the classifier (``pretrained_cfg["classifier"]``, default ``head``) differs, the number of
    classes in the checkpoint.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected, mismatched = _differences(state_dict, expected)
    if missing or unexpected or mismatched:
        report = _mismatch_report(missing, unexpected, mismatched, state_dict, expected)
        classes = _classifier_mismatch(model, state_dict, [*missing, *unexpected, *mismatched])
        if classes is not None:
            report += f"; num_classes mismatch: the checkpoint has {classes} classes"
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {report}")
    model.load_state_dict(state_dict, strict=True)


def _classifier_mismatch(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], differing: list[str]
) -> int | None:
    """The checkpoint's number of classes when a classifier key is among ``differing``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifiers = cfg.get("classifier", "head")
    for name in [classifiers] if isinstance(classifiers, str) else classifiers:
        weight = state_dict.get(f"{name}.weight")
        if weight is not None and any(k.startswith(f"{name}.") for k in differing):
            return int(weight.shape[0])
    return None


@dataclass
class LoadResult:
    """What :func:`load_pretrained` left out: keys at their initial values, keys ignored."""

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)


def load_pretrained(
    model: nn.Module,
    checkpoint: str | Path | Mapping[str, Any],
    strict: bool = True,
) -> LoadResult:
    """Load ``checkpoint`` (a path, a hub directory or an in-memory state dict) into ``model``.

    Formats: original ``.pth``; ``state_dict``/``model``/``state_dict_ema`` wrappers; mm*
    (``backbone.``); Hugging Face NAT/DiNAT (files or hub directories); safetensors. Files are
    read with ``weights_only=True``. With ``strict``, any other difference raises
    :class:`~nat.files.CheckpointError` (see :func:`load_state_dict_strict`); without, it is
    skipped with a warning.
    """
    if isinstance(checkpoint, Mapping):
        state_dict, config, source = formats.to_original(checkpoint), None, "state dict"
    else:
        ckpt = formats.read_checkpoint(checkpoint)
        state_dict, config = formats.to_original(ckpt.state_dict), ckpt.config
        source = f"checkpoint={str(checkpoint)!r}"
    if config is not None:
        _check_config(model, config)
    return _load_adapted(model, state_dict, source, strict)


def _load_adapted(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, strict: bool
) -> LoadResult:
    """:func:`load_pretrained` once the checkpoint is read: adapt, then load."""
    current = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in current.items()}
    state_dict, allowed_missing = _adapt(model, dict(state_dict), expected)
    left_out = [k for k in expected if k not in state_dict]
    if strict:
        # Keys the adaptations may leave out keep the model's values; anything else must fit.
        kept = {k: current[k] for k in allowed_missing if k not in state_dict}
        load_state_dict_strict(model, {**state_dict, **kept}, source)
        return LoadResult(missing_keys=left_out)

    missing, unexpected, mismatched = _differences(state_dict, expected, allowed_missing)
    if missing or unexpected or mismatched:
        report = _mismatch_report(missing, unexpected, mismatched, state_dict, expected)
        warnings.warn(f"loading non-strictly, skipped: {report}", stacklevel=2)
        for key in (*unexpected, *mismatched):
            state_dict.pop(key)
    model.load_state_dict(state_dict, strict=False)
    return LoadResult(
        missing_keys=[k for k in expected if k not in state_dict],
        unexpected_keys=unexpected + mismatched,
    )


def fit_state_dict(model: nn.Module, checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``checkpoint`` in any layout -> a state dict for ``model``, adapted like
    :func:`load_pretrained` does; keys it may leave out keep ``model``'s current values.

    Differences beyond those adaptations are left for ``load_state_dict`` to report (this is the
    ``pretrained_filter_fn`` timm applies to in-memory state dicts).
    """
    current = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in current.items()}
    state_dict, allowed = _adapt(model, formats.to_original(checkpoint), expected)
    for key in allowed:
        state_dict.setdefault(key, current[key])
    return state_dict


def _adapt(
    model: nn.Module, state_dict: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Bridge the differences timm adapts silently; returns the state dict and allowed misses."""
    allowed: set[str] = set()
    ckpt_is_backbone = any(_BACKBONE_NORM.match(k) for k in state_dict)
    model_is_backbone = any(_BACKBONE_NORM.match(k) for k in expected)
    if model_is_backbone and not ckpt_is_backbone:
        dropped = [k for k in state_dict if k.startswith(_CLASSIFIER_ONLY)]
        for key in dropped:
            del state_dict[key]
        allowed |= {k for k in expected if _BACKBONE_NORM.match(k)}
        _logger.info("classification checkpoint into a backbone: norm/head dropped, norm{i} new")
    elif ckpt_is_backbone and not model_is_backbone:
        for key in [k for k in state_dict if _BACKBONE_NORM.match(k)]:
            del state_dict[key]
        allowed |= {k for k in expected if k.startswith(_CLASSIFIER_ONLY)}
        warnings.warn(
            "backbone checkpoint into a classifier: the final norm and head keep their initial "
            "values",
            stacklevel=3,
        )
    elif model_is_backbone:
        # Backbones may differ in out_indices: only the norms of shared outputs carry over.
        for key in [k for k in state_dict if _BACKBONE_NORM.match(k) and k not in expected]:
            del state_dict[key]
        allowed |= {k for k in expected if _BACKBONE_NORM.match(k)}

    head = [k for k in ("head.weight", "head.bias") if k in state_dict]
    if head and not model_is_backbone:
        ckpt_classes = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else None
        model_classes = expected["head.weight"][0] if "head.weight" in expected else 0
        if ckpt_classes != model_classes:
            for key in head:
                del state_dict[key]
            allowed |= {"head.weight", "head.bias"}
            warnings.warn(
                f"num_classes: the checkpoint has {ckpt_classes} classes and the model "
                f"{model_classes}; the head is not loaded",
                stacklevel=3,
            )

    if _FIRST_CONV in state_dict and _FIRST_CONV in expected:
        weight = state_dict[_FIRST_CONV]
        in_chans = expected[_FIRST_CONV][1]
        if weight.shape[1] != in_chans and weight.shape[0] == expected[_FIRST_CONV][0]:
            state_dict[_FIRST_CONV] = adapt_input_conv(in_chans, weight)
            _logger.info(
                "adapted %s from %d to %d channels", _FIRST_CONV, weight.shape[1], in_chans
            )
    return state_dict, allowed


def _mismatch_report(
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
) -> str:
    def listed(keys: list[str]) -> str:
        more = f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
        return ", ".join(keys[:_SHOWN]) + more

    parts = []
    if mismatched:
        shapes = [
            f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(expected[k])}"
            for k in mismatched
        ]
        parts.append(f"{len(mismatched)} shape mismatches ({listed(shapes)})")
    if missing:
        parts.append(f"{len(missing)} missing keys ({listed(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({listed(unexpected)})")
    return "; ".join(parts)


def _check_config(model: nn.Module, config: Mapping[str, Any]) -> None:
    """Warn when the checkpoint's config describes other dilations than the model has."""
    args = _config_model_args(config)
    theirs = args.get("dilations")
    ours = getattr(model, "dilations", None)
    if ours is None or "dilations" not in args:
        return
    theirs = theirs or [[1] * len(level) for level in ours]
    if [list(level) for level in theirs] != [list(level) for level in ours]:
        warnings.warn(
            f"the checkpoint's config has dilations={theirs}, the model {ours}: the weights "
            f"load, but the model will not compute what they were trained for",
            stacklevel=3,
        )


def _config_model_args(config: Mapping[str, Any]) -> dict[str, Any]:
    if "model_type" in config:
        return formats.hf_config_to_model_args(config)
    args = dict(config.get("model_args", {}))
    if "dilations" not in args and "architecture" in config:
        args["dilations"] = None
    return args


def model_args(model: NAT | NATBackbone) -> dict[str, Any]:
    """The constructor keywords that rebuild ``model``'s architecture (read from its modules)."""
    blocks = [level.blocks for level in model.levels]
    first = blocks[0][0]
    last_drop = blocks[-1][-1].drop_path
    args: dict[str, Any] = dict(
        embed_dim=model.patch_embed.proj[1].out_channels,
        depths=[len(b) for b in blocks],
        num_heads=[b[0].attn.num_heads for b in blocks],
        kernel_size=model.kernel_size[0]
        if len(set(model.kernel_size)) == 1
        else list(model.kernel_size),
        mlp_ratio=first.mlp.fc1.out_features / first.mlp.fc1.in_features,
        layer_scale=first.layer_scale,
        dilations=None
        if all(d == 1 for level in model.dilations for d in level)
        else [list(level) for level in model.dilations],
        in_chans=model.patch_embed.proj[0].in_channels,
        qkv_bias=first.attn.qkv.bias is not None,
        drop_path_rate=getattr(last_drop, "drop_prob", 0.0),
    )
    if isinstance(model, NATBackbone):
        args["out_indices"] = list(model.out_indices)
    else:
        args["num_classes"] = model.num_classes
    return args


def _signature(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {
        k: tuple(v.shape)
        for k, v in state_dict.items()
        if k.startswith(("patch_embed.", "levels."))
    }


@cache
def _variant_signature(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return _signature(timm.create_model(name).state_dict())


def identify_variant(state_dict: Mapping[str, torch.Tensor], hint: str | None = None) -> str:
    """The registered variant whose stem and levels have these keys and shapes.

    NAT and DiNAT variants differ only in dilations; ``hint`` (a file name such as
    ``dinat_tiny_in1k_224.pth``, which contains every word of ``dinat_tiny``) breaks such ties.
    """
    wanted = _signature(state_dict)
    fits = [n for n in _variants() if _variant_signature(n) == wanted]
    if not fits:
        raise CheckpointError(
            "the checkpoint matches no registered NAT/DiNAT variant; pass --model / model="
        )
    if len(fits) == 1:
        return fits[0]
    if hint is not None:
        # "dinat_large_in22k_in1k_384.pth" names dinat_large_384: every word of it is in the hint.
        words = set(re.split(r"[_.\-]", hint.lower()))
        by_hint = [n for n in fits if set(n.split("_")) <= words]
        if by_hint:
            return max(by_hint, key=lambda n: len(n.split("_")))
    raise ValueError(
        f"the checkpoint fits {fits} (they differ only in dilations, which weights do not "
        f"record); name the model (--model / model=)"
    )


def _build(
    args: Mapping[str, Any], backbone: bool, device: torch.device | str | None = None
) -> NAT | NATBackbone:
    args = dict(args)
    with torch.device(device or "cpu"):
        if backbone:
            args.pop("num_classes", None)
            return NATBackbone(**args)
        args.pop("out_indices", None)
        return NAT(**args)


def _resolve_args(
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | None,
    model: str | None,
    hint: str | None,
) -> tuple[str | None, dict[str, Any]]:
    """(variant name or None, constructor keywords) for a checkpoint."""
    if model is None and config is not None:
        args = _config_model_args(config)
        if args:
            return config.get("architecture"), args
    if model is None:
        model = identify_variant(state_dict, hint)
    if model not in _variants():
        raise ValueError(f"model={model!r} is not a registered NAT/DiNAT variant")
    with torch.device("meta"):
        variant = timm.create_model(model)
    args = model_args(variant)
    if "head.weight" in state_dict:
        args["num_classes"] = state_dict["head.weight"].shape[0]
    return model, args


def load_model(
    checkpoint: str | Path, model: str | None = None, backbone: bool | None = None
) -> NAT | NATBackbone:
    """Build the model a checkpoint describes and load it strictly.

    The architecture comes from ``model`` (a registered variant name), else the checkpoint's
    config (a hub directory's ``config.json``, or the ``.json`` written beside a converted file),
    else the weights' shapes (see :func:`identify_variant`). ``backbone`` defaults to whether the
    checkpoint is a backbone one.
    """
    ckpt = formats.read_checkpoint(checkpoint)
    state_dict = formats.to_original(ckpt.state_dict)
    name, args = _resolve_args(state_dict, ckpt.config, model, Path(checkpoint).name)
    if backbone is None:
        backbone = any(_BACKBONE_NORM.match(k) for k in state_dict)
    if backbone and "out_indices" not in args:
        args["out_indices"] = _output_levels(state_dict) or None
    built = _build(args, backbone)
    if name is not None and not backbone and name in _variants():
        built.pretrained_cfg = timm.models.get_pretrained_cfg(name).to_dict()
    _load_adapted(built, state_dict, f"checkpoint={str(checkpoint)!r}", strict=True)
    return built.eval()


def convert_checkpoint(
    source: str | Path,
    destination: str | Path,
    layout: str = "original",
    model: str | None = None,
) -> list[Path]:
    """Convert any supported checkpoint; returns the files written.

    ``layout="original"``: ``destination`` is a ``.safetensors`` file (or a directory to put
    ``<source stem>.safetensors`` in), with a ``.json`` config beside it. ``layout="hf"``:
    ``destination`` is a directory receiving ``model.safetensors`` and a transformers
    ``config.json``. The weights are checked against the architecture before anything is written.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} must be one of {', '.join(map(repr, LAYOUTS))}")
    source = Path(source)
    ckpt = formats.read_checkpoint(source)
    state_dict = formats.to_original(ckpt.state_dict)
    name, args = _resolve_args(state_dict, ckpt.config, model, source.name)
    backbone = any(_BACKBONE_NORM.match(k) for k in state_dict)
    if backbone:
        args["out_indices"] = _output_levels(state_dict)
        args.pop("num_classes", None)
    else:
        args.pop("out_indices", None)
    target = _build(args, backbone, device="meta")
    expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    missing, unexpected, mismatched = _differences(state_dict, expected)
    if missing or unexpected or mismatched:
        report = _mismatch_report(missing, unexpected, mismatched, state_dict, expected)
        raise CheckpointError(
            f"checkpoint={str(source)!r} does not fit {name or 'its config'}: {report}"
        )
    state_dict = {k: state_dict[k] for k in expected}
    destination = Path(destination)
    if layout == "hf" and backbone:
        raise ValueError(
            f"{source} is a backbone checkpoint; the Hugging Face layout holds classifiers "
            f"only (use --to original)"
        )
    if layout == "original" and (destination.is_dir() or destination.suffix == ""):
        destination = (
            destination / f"{source.stem if source.is_file() else source.name}.safetensors"
        )
    try:
        if layout == "hf":
            return formats.write_hf(state_dict, destination, args)
        config = {
            "format": formats.SIDECAR_FORMAT,
            "architecture": name,
            "backbone": backbone,
            "model_args": args,
        }
        return formats.write_original(state_dict, destination, config)
    except OSError as err:
        raise OSError(
            f"destination={str(destination)!r} cannot be written ({err.strerror or err})"
        ) from None
