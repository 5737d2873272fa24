"""Checkpoint formats: reading files safely, recognising layouts, converting between them.

Containers read (always with ``weights_only=True``; pickled code is refused, never run):

- a PyTorch file (``.pth``/``.pt``/``.bin``) holding a state dict, or a wrapper
  ``{"state_dict_ema" | "model_ema" | "state_dict" | "model": state_dict, ...}`` (EMA weights first,
  as timm does; mmcv checkpoints are ``{"meta", "state_dict", ...}``);
- a safetensors file, recognised by its header whatever its name;
- a directory with ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin`` (a Hugging
  Face hub snapshot, or one written by ``nat convert --to hf``).

Key layouts, all converted to the *original* one (the reference implementation's keys):

- ``original``: ``patch_embed.``, ``levels.L.blocks.J.``, ``norm``, ``head`` (classification) or
  ``norm0``..``norm3`` (backbone); ``module.`` (DDP) prefixes are stripped;
- ``mm``: mmdetection/mmsegmentation, the backbone under ``backbone.`` (neck and heads dropped);
- ``hf``: transformers' NAT/DiNAT (``nat.``/``dinat.`` prefixes, split query/key/value, stacked
  layer scales), mapped as in ``docs/nat-models.md``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ..files import CheckpointError, atomic_write, is_safetensors, read_tensors, write_json

__all__ = [
    "Checkpoint",
    "detect_layout",
    "hf_config_to_model_args",
    "hf_to_original",
    "model_args_to_hf_config",
    "original_to_hf",
    "read_checkpoint",
    "to_original",
    "unwrap",
    "write_hf",
    "write_original",
]

StateDict = dict[str, torch.Tensor]

WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"
SIDECAR_FORMAT = "nat-original"
"""``format`` of the JSON config written beside a converted ``.safetensors`` file."""
_MM_PREFIX = "backbone."


@dataclass
class Checkpoint:
    """What a file or directory holds: its tensors and, when one came with it, its config."""

    state_dict: StateDict
    config: dict[str, Any] | None
    source: str
    """How it was read: ``"torch"``, ``"safetensors"`` or ``"directory"``."""


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a file or a hub-style directory; a ``X.json`` beside ``X.safetensors`` is its config."""
    path = Path(path)
    if path.is_dir():
        config_path = path / CONFIG_FILE
        weights = next((path / n for n in HF_WEIGHT_FILES if (path / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(
                f"checkpoint={str(path)!r} is a directory without {' or '.join(HF_WEIGHT_FILES)}"
            )
        config = _read_config(config_path) if config_path.is_file() else None
        return Checkpoint(unwrap(read_tensors(weights)), config, "directory")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint={str(path)!r} does not exist")
    sidecar = path.with_suffix(".json")
    config = _read_config(sidecar) if sidecar.is_file() and sidecar != path else None
    if config is not None and config.get("format") != SIDECAR_FORMAT:
        config = None  # some other JSON object that happens to share the name
    source = "safetensors" if is_safetensors(path) else "torch"
    return Checkpoint(unwrap(read_tensors(path)), config, source)


def _read_config(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON config (``config.json``, or the ``.json`` beside a converted file)."""
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"config={str(path)!r} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(
            f"config={str(path)!r} holds a JSON {type(config).__name__}, not an object"
        )
    return config


def unwrap(obj: Any) -> StateDict:
    """The state dict inside a training/mmcv wrapper (EMA weights first), or ``obj`` itself."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if (
            isinstance(inner, Mapping)
            and inner
            and all(isinstance(v, torch.Tensor) for v in inner.values())
        ):
            return dict(inner)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"checkpoint has no tensors and none of the wrapper keys {list(WRAPPER_KEYS)}; "
            f"its keys are {list(obj)[:8]}"
        )
    if len(tensors) != len(obj):
        others = [k for k in obj if k not in tensors][:8]
        raise CheckpointError(
            f"checkpoint mixes tensors with other entries {others}"
            f" and has none of the wrapper keys {list(WRAPPER_KEYS)}"
        )
    return tensors


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """``"hf"``, ``"mm"`` or ``"original"``, from the key names (after unwrapping)."""
    keys = [k.removeprefix("module.") for k in state_dict]
    if any(k.startswith(("nat.", "dinat.", "embeddings.", "encoder.")) for k in keys):
        return "hf"
    if any(k.startswith(_MM_PREFIX) for k in keys):
        return "mm"
    return "original"


def to_original(checkpoint: Mapping[str, Any]) -> StateDict:
    """Any supported layout (wrapped or not) -> the original keys."""
    state_dict = unwrap(checkpoint)
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    layout = detect_layout(state_dict)
    if layout == "hf":
        return hf_to_original(state_dict)
    if layout == "mm":
        # The neck and heads of the detector/segmenter are not part of this model.
        return {k[len(_MM_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(_MM_PREFIX)}
    return state_dict


# original <-> Hugging Face. Templates: {L} level, {J} layer, {I} conv index; the HF side is under
# the model prefix ("nat."/"dinat.") except the classifier. qkv and layer scales are reshaped apart.
_HF_RENAMES = (
    ("patch_embed.proj.{I}.", "embeddings.patch_embeddings.projection.{I}."),
    ("patch_embed.norm.", "embeddings.norm."),
    ("levels.{L}.blocks.{J}.norm1.", "encoder.levels.{L}.layers.{J}.layernorm_before."),
    ("levels.{L}.blocks.{J}.norm2.", "encoder.levels.{L}.layers.{J}.layernorm_after."),
    ("levels.{L}.blocks.{J}.attn.rpb", "encoder.levels.{L}.layers.{J}.attention.self.rpb"),
    ("levels.{L}.blocks.{J}.attn.proj.", "encoder.levels.{L}.layers.{J}.attention.output.dense."),
    ("levels.{L}.blocks.{J}.mlp.fc1.", "encoder.levels.{L}.layers.{J}.intermediate.dense."),
    ("levels.{L}.blocks.{J}.mlp.fc2.", "encoder.levels.{L}.layers.{J}.output.dense."),
    ("levels.{L}.downsample.", "encoder.levels.{L}.downsample."),
    ("norm.", "layernorm."),
)
_QKV = ("query", "key", "value")
_HF_QKV = re.compile(
    r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$"
)
_HF_LAYER_SCALE = re.compile(r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.layer_scale_parameters$")
_QKV_KEY = re.compile(r"^levels\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_GAMMA_KEY = re.compile(r"^levels\.(\d+)\.blocks\.(\d+)\.gamma([12])$")


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for name in ("L", "J", "I"):
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>\\d+)")
    return re.compile("^" + pattern)


_TO_HF = [(_template_regex(o), h) for o, h in _HF_RENAMES]
_FROM_HF = [(_template_regex(h), o) for o, h in _HF_RENAMES]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.format(**match.groupdict()) + key[match.end() :]
    return None


def hf_to_original(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """transformers' NAT/DiNAT keys -> original keys; unknown keys are kept as they are."""
    out: StateDict = {}
    qkv: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        name = key
        for prefix in ("nat.", "dinat."):
            name = name.removeprefix(prefix)
        if name.startswith("classifier."):
            out["head." + name.removeprefix("classifier.")] = value
        elif match := _HF_QKV.match(name):
            level, layer, which, kind = match.groups()
            qkv.setdefault((level, layer, kind), {})[which] = value
        elif match := _HF_LAYER_SCALE.match(name):
            level, layer = match.groups()
            out[f"levels.{level}.blocks.{layer}.gamma1"] = value[0]
            out[f"levels.{level}.blocks.{layer}.gamma2"] = value[1]
        else:
            out[_rename(name, _FROM_HF) or key] = value
    for (level, layer, kind), parts in qkv.items():
        missing = [p for p in _QKV if p not in parts]
        if missing:
            raise CheckpointError(
                f"Hugging Face checkpoint: level {level} layer {layer} lacks attention.self."
                f"{{{','.join(missing)}}}.{kind}; query, key and value must all be present"
            )
        out[f"levels.{level}.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in _QKV])
    return out


def original_to_hf(state_dict: Mapping[str, torch.Tensor], model_type: str = "nat") -> StateDict:
    """Original (classification) keys -> transformers' layout under ``{model_type}.``."""
    if model_type not in ("nat", "dinat"):
        raise ValueError(f"model_type={model_type!r} must be 'nat' or 'dinat'")
    backbone_norms = [k for k in state_dict if re.match(r"^norm\d+\.", k)]
    if backbone_norms:
        raise ValueError(
            f"the Hugging Face layout has no place for the backbone norms {backbone_norms[:2]}...; "
            f"convert a classification checkpoint, or keep the original layout"
        )
    out: StateDict = {}
    gammas: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key.startswith("head."):
            out["classifier." + key.removeprefix("head.")] = value
        elif match := _QKV_KEY.match(key):
            level, layer, kind = match.groups()
            base = f"{model_type}.encoder.levels.{level}.layers.{layer}.attention.self"
            for which, part in zip(_QKV, value.chunk(3, dim=0), strict=True):
                out[f"{base}.{which}.{kind}"] = part.clone()
        elif match := _GAMMA_KEY.match(key):
            level, layer, which = match.groups()
            gammas.setdefault((level, layer), {})[which] = value
        else:
            renamed = _rename(key, _TO_HF)
            if renamed is None:
                raise ValueError(f"key {key!r} has no Hugging Face counterpart")
            out[f"{model_type}.{renamed}"] = value
    for (level, layer), pair in gammas.items():
        if set(pair) != {"1", "2"}:
            raise ValueError(f"level {level} block {layer} has only one of gamma1/gamma2")
        key = f"{model_type}.encoder.levels.{level}.layers.{layer}.layer_scale_parameters"
        out[key] = torch.stack([pair["1"], pair["2"]])
    return out


def hf_config_to_model_args(config: Mapping[str, Any]) -> dict[str, Any]:
    """A transformers NAT/DiNAT ``config.json`` -> :class:`~nat.models.NAT` keywords."""
    model_type = config.get("model_type")
    if model_type not in ("nat", "dinat"):
        raise CheckpointError(
            f"config.json has model_type={model_type!r}; expected 'nat' or 'dinat'"
        )
    missing = [k for k in ("embed_dim", "depths", "num_heads") if k not in config]
    if missing:
        raise CheckpointError(f"config.json lacks {missing}, needed to build the model")
    layer_scale = config.get("layer_scale_init_value", 0.0)
    args: dict[str, Any] = dict(
        embed_dim=config["embed_dim"],
        depths=list(config["depths"]),
        num_heads=list(config["num_heads"]),
        kernel_size=config.get("kernel_size", 7),
        mlp_ratio=config.get("mlp_ratio", 3.0),
        layer_scale=layer_scale if layer_scale and layer_scale > 0 else None,
        drop_path_rate=config.get("drop_path_rate", 0.1),
        in_chans=config.get("num_channels", 3),
        qkv_bias=config.get("qkv_bias", True),
        dilations=config.get("dilations") if model_type == "dinat" else None,
    )
    if "id2label" in config:
        args["num_classes"] = len(config["id2label"])
    elif "num_labels" in config:
        args["num_classes"] = config["num_labels"]
    return args


def model_args_to_hf_config(args: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`~nat.models.NAT` keywords -> a transformers-style ``config.json``."""
    kernel = args.get("kernel_size", 7)
    if not isinstance(kernel, int):
        if len(set(kernel)) != 1:
            raise ValueError(f"kernel_size={kernel} varies per level; the HF layout has one kernel")
        kernel = kernel[0]
    dilations = args.get("dilations")
    model_type = "dinat" if dilations is not None else "nat"
    num_classes = args.get("num_classes", 1000)
    config: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [
            "DinatForImageClassification" if dilations else "NatForImageClassification"
        ],
        "patch_size": 4,
        "num_channels": args.get("in_chans", 3),
        "embed_dim": args["embed_dim"],
        "depths": list(args["depths"]),
        "num_heads": list(args["num_heads"]),
        "kernel_size": kernel,
        "mlp_ratio": float(args["mlp_ratio"]),
        "qkv_bias": args.get("qkv_bias", True),
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "layer_scale_init_value": float(args.get("layer_scale") or 0.0),
        "drop_path_rate": float(args.get("drop_path_rate", 0.0)),
        "id2label": {str(i): f"LABEL_{i}" for i in range(num_classes)},
        "label2id": {f"LABEL_{i}": i for i in range(num_classes)},
    }
    if dilations is not None:
        config["dilations"] = [list(level) for level in dilations]
    return config


def _tensors_for_saving(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    # safetensors refuses tensors sharing storage; contiguous copies are self-contained.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}


def write_original(
    state_dict: Mapping[str, torch.Tensor], path: str | Path, config: Mapping[str, Any]
) -> list[Path]:
    """``path`` (safetensors, original keys) and ``path.with_suffix(".json")`` (``config``)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"destination={str(path)!r} must end in .safetensors")
    atomic_write(
        path,
        safetensors.torch.save(
            _tensors_for_saving(state_dict), metadata={"format": "pt", "layout": "original"}
        ),
    )
    return [path, write_json(path.with_suffix(".json"), dict(config))]


def write_hf(
    state_dict: Mapping[str, torch.Tensor], directory: str | Path, model_args: Mapping[str, Any]
) -> list[Path]:
    """A transformers-style directory: ``model.safetensors`` and ``config.json``."""
    directory = Path(directory)
    if directory.suffix in (".safetensors", ".pth", ".pt", ".bin"):
        raise ValueError(f"destination={str(directory)!r} must be a directory for --to hf")
    config = model_args_to_hf_config(model_args)
    tensors = original_to_hf(state_dict, config["model_type"])
    weights = atomic_write(
        directory / HF_WEIGHT_FILES[0],
        safetensors.torch.save(_tensors_for_saving(tensors), metadata={"format": "pt"}),
    )
    return [weights, write_json(directory / CONFIG_FILE, config)]
