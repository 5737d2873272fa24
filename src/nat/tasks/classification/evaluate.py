"""Top-1/top-5 evaluation, exact across ranks; ``validate``: a model and weights on a dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ...data import DIGITS, check_classes, create_eval_transform, drop_skipped
from ...engine import (
    CheckpointError,
    DistEnv,
    all_reduce_sum,
    autocast,
    eval_loader,
    init_distributed,
    limit,
)
from .loaders import ImageSplit
from .model import load_classifier

__all__ = ["evaluate", "validate"]


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
    images = ImageSplit(data, split, dataset=dataset, skip_bad_images=skip_bad_images)
    data_classes = images.classes
    if num_classes is None and checkpoint is None and not pretrained and data_classes:
        num_classes = len(data_classes)
    loaded = load_classifier(model_name, checkpoint, num_classes=num_classes, pretrained=pretrained)
    model = loaded.model
    if loaded.classes is not None and data_classes is not None:
        check_classes(loaded.classes, data_classes, f"{images.name} against {checkpoint}")
    model_classes = model.num_classes if hasattr(model, "num_classes") else None
    if data_classes and model_classes is not None and len(data_classes) > model_classes:
        raise CheckpointError(
            f"num_classes mismatch: the model predicts {model_classes} classes but "
            f"{images.name} has {len(data_classes)}"
        )
    data_cfg = loaded.eval_data_config(
        input_size=input_size, interpolation=interpolation, crop_pct=crop_pct
    )
    dataset_obj = images.open(data_cfg["input_size"][-1])
    dataset_obj.transform = create_eval_transform(data_cfg)
    evaluated = limit(dataset_obj, max_samples)
    loader = eval_loader(evaluated, batch_size, env, workers=workers, collate_fn=drop_skipped)
    model.to(env.device)
    metrics = evaluate(model, loader, env, amp=amp, progress=progress, desc="validate")
    metrics["skipped"] = len(evaluated) - metrics["count"]
    return {
        "model": model_name,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "data": str(Path(data)) if data is not None else images.name,
        "split": split,
        **metrics,
        "data_config": data_cfg,
    }
