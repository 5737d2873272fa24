"""Top-1/top-5 evaluation, exact across ranks; ``validate``: a model and weights on a dataset."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ...data import (
    DIGITS,
    check_classes,
    create_classification_dataset,
    create_eval_transform,
    dataset_classes,
)
from .checkpoint import CheckpointError, load_checkpoint
from .distributed import DistEnv, all_reduce_sum, init_distributed
from .loaders import data_config_for, eval_loader, limit
from .model import TRAIN_CHECKPOINT_FORMAT, create_classifier, load_classifier_weights

__all__ = ["autocast", "evaluate", "validate"]


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision context: ``amp`` is ``none``, ``bf16`` or ``fp16`` (CUDA only)."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs a CUDA device; use bf16 on CPU")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    env: DistEnv,
    *,
    amp: str = "none",
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """``top1``/``top5`` (percent), mean cross-entropy ``loss`` and ``count`` over the whole
    dataset: per-rank sums are reduced, so each sample counts exactly once."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = loss_sum = count = 0.0
    bar = tqdm(loader, desc=desc, leave=False, disable=not (progress and env.is_main))
    for batch in bar:
        if batch is None:  # every image of the batch was unreadable and skipped
            continue
        images, targets = batch
        images = images.to(env.device, non_blocking=True)
        targets = targets.to(env.device, non_blocking=True)
        with autocast(env.device, amp):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        hits = top == targets[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=-1).sum().item()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        count += targets.numel()
    model.train(was_training)
    correct1, correct5, loss_sum, count = all_reduce_sum([correct1, correct5, loss_sum, count], env)
    if count == 0:
        raise ValueError("the evaluation set is empty")
    return {
        "top1": 100.0 * correct1 / count,
        "top5": 100.0 * correct5 / count,
        "loss": loss_sum / count,
        "count": int(count),
    }


def validate(
    model_name: str,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = DIGITS,
    dataset: str = "",
    split: str = "val",
    num_classes: int | None = None,
    batch_size: int = 128,
    workers: int = 4,
    amp: str = "none",
    input_size: int | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    max_samples: int | None = None,
    skip_bad_images: bool = False,
    pretrained: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model_name`` with weights from ``checkpoint`` (or timm's pretrained weights)
    on a split of ``data`` with the model's evaluation transform (for NAT: resize 224/0.875
    bicubic, centre crop 224). Training checkpoints carry their data config, which is used unless
    overridden. Returns ``top1``, ``top5``, ``loss``, ``count`` and what was evaluated."""
    env = init_distributed(device)
    dataset_obj = create_classification_dataset(
        data, split, dataset=dataset, skip_bad_images=skip_bad_images
    )
    data_classes = dataset_classes(dataset_obj)
    state = load_checkpoint(checkpoint) if checkpoint is not None else {}
    if state.get("format") == TRAIN_CHECKPOINT_FORMAT:
        if data_classes is not None:
            check_classes(state["classes"], data_classes, f"{data or DIGITS} against {checkpoint}")
        num_classes = num_classes or len(state["classes"])
    elif num_classes is None and checkpoint is None and not pretrained and data_classes:
        num_classes = len(data_classes)
    model = create_classifier(model_name, num_classes=num_classes, pretrained=pretrained)
    if checkpoint is not None:
        load_classifier_weights(model, checkpoint, model_name=model_name, state=state)
    model_classes = model.num_classes if hasattr(model, "num_classes") else None
    if data_classes and model_classes is not None and len(data_classes) > model_classes:
        raise CheckpointError(
            f"num_classes mismatch: the model predicts {model_classes} classes but "
            f"{data or DIGITS} has {len(data_classes)}"
        )
    saved_cfg = state.get("data_config") or {}
    data_cfg = data_config_for(
        model,
        input_size=input_size or (saved_cfg.get("input_size") or [None])[-1],
        interpolation=interpolation or saved_cfg.get("interpolation"),
        crop_pct=crop_pct or saved_cfg.get("crop_pct"),
        mean=saved_cfg.get("mean"),
        std=saved_cfg.get("std"),
    )
    if data is None or (str(data) == DIGITS and not dataset):
        dataset_obj = create_classification_dataset(
            data, split, image_size=data_cfg["input_size"][-1]
        )
    dataset_obj.transform = create_eval_transform(data_cfg)
    evaluated = limit(dataset_obj, max_samples)
    loader = eval_loader(evaluated, batch_size, env, workers=workers)
    model.to(env.device)
    metrics = evaluate(model, loader, env, amp=amp, progress=progress, desc="validate")
    metrics["skipped"] = len(evaluated) - metrics["count"]
    return {
        "model": model_name,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "data": str(Path(data)) if data is not None else DIGITS,
        "split": split,
        **metrics,
        "data_config": data_cfg,
    }
