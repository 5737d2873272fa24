"""The models the figures look at: timm's (ViT, Swin, ConvNeXt) and this project's NAT/DiNAT.

No weights are downloaded: a model is randomly initialised unless a checkpoint file is given, and
every figure says which of its models are untrained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import get_pretrained_cfg_value
from torch import nn
from torchvision.transforms import functional as TF

from .. import models as nat_models

__all__ = ["create_model", "is_nat", "model_input", "normalization"]


def is_nat(name: str) -> bool:
    """Whether ``name`` is one of this project's NAT/DiNAT variants (registered with timm)."""
    return name in timm.list_models(module="nat")


def create_model(
    name: str, img_size: int | None = None, checkpoint: str | Path | None = None
) -> nn.Module:
    """Model ``name`` in eval mode, with the weights of ``checkpoint`` or random ones.

    ``img_size`` sizes the models whose timm config has a fixed input size (ViT, Swin: their
    position tables and windows); the others (NAT/DiNAT, ConvNeXt) take any size. A NAT/DiNAT
    checkpoint may be in any format :func:`nat.models.load_pretrained` reads; other models load
    timm checkpoints.
    """
    if not isinstance(name, str) or not timm.is_model(name):
        raise ValueError(f"model {name!r} is not registered with timm")
    kwargs = {}
    if img_size is not None and get_pretrained_cfg_value(name, "fixed_input_size"):
        kwargs["img_size"] = img_size
    with torch.random.fork_rng(devices=[]):  # the same random model every time, RNG untouched
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **kwargs)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise ValueError(f"checkpoint {str(path)!r} for {name} is not a file")
        if is_nat(name):
            nat_models.load_pretrained(model, path)
        else:
            timm.models.load_checkpoint(model, str(path))
    return model.eval()


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel of ``model``'s input (its pretrained config, else ImageNet's)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return (
        tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
        tuple(cfg.get("std", IMAGENET_DEFAULT_STD)),
    )


def model_input(
    image: Image.Image, model: nn.Module, img_size: int
) -> tuple[torch.Tensor, np.ndarray]:
    """``image`` as ``model`` reads it: shorter side resized to ``img_size`` (bicubic), centre
    crop, normalised with the model's mean and std.

    Returns ``(batch, shown)``: ``[1, 3, img_size, img_size]`` and the crop as the figures show
    it, ``[img_size, img_size, 3]`` floats in ``[0, 1]``.
    """
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 8:
        raise ValueError(f"img_size={img_size!r} must be an integer >= 8")
    crop = TF.center_crop(
        TF.resize(image.convert("RGB"), img_size, TF.InterpolationMode.BICUBIC), img_size
    )
    tensor = TF.to_tensor(crop)
    batch = TF.normalize(tensor, *normalization(model)).unsqueeze(0)
    return batch, tensor.permute(1, 2, 0).numpy()
