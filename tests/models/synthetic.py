"""Synthetic checkpoints built from the published key lists (``state_dict_keys/*.json``)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch

KEYS_DIR = Path(__file__).parent / "state_dict_keys"


@cache
def published_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Every key of a published checkpoint and its shape, in file order."""
    return {k: tuple(v) for k, v in json.loads((KEYS_DIR / f"{name}.json").read_text()).items()}


def synthetic_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the published keys and shapes (small values, like trained weights)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(shape, generator=generator) * 0.02
        for k, shape in published_shapes(name).items()
    }


_HF_RENAMES = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.rpb": "attention.self.rpb",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}


def to_hf(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The Hugging Face layout, written out from the spec's mapping table (independently of
    ``nat.models.formats``, so the tests check the converter against the spec)."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if key.startswith("patch_embed.proj."):
            out[f"{prefix}.embeddings.patch_embeddings.projection.{parts[2]}.{parts[3]}"] = value
        elif key.startswith("patch_embed.norm."):
            out[f"{prefix}.embeddings.norm.{parts[2]}"] = value
        elif key.startswith("head."):
            out[f"classifier.{parts[1]}"] = value
        elif key.startswith("norm."):
            out[f"{prefix}.layernorm.{parts[1]}"] = value
        elif ".downsample." in key:
            out[f"{prefix}.encoder.{key}"] = value
        else:
            level, layer, rest = parts[1], parts[3], ".".join(parts[4:])
            base = f"{prefix}.encoder.levels.{level}.layers.{layer}."
            if rest.startswith("attn.qkv."):
                for name, part in zip(("query", "key", "value"), value.chunk(3), strict=True):
                    out[base + f"attention.self.{name}.{parts[-1]}"] = part.clone()
            elif rest == "gamma1":
                gamma2 = state_dict[key.replace("gamma1", "gamma2")]
                out[base + "layer_scale_parameters"] = torch.stack([value, gamma2])
            elif rest != "gamma2":
                old = next(o for o in _HF_RENAMES if rest == o or rest.startswith(o + "."))
                out[base + _HF_RENAMES[old] + rest[len(old) :]] = value
    return out
