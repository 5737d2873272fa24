"""Evaluation: mIoU/mAcc/aAcc and per-class IoU over a split, exact across ranks; ``evaluate``:
a checkpoint (of this package or mmsegmentation's) on a dataset."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ...engine import DistEnv, all_reduce_sum, eval_loader, init_distributed, limit, load_checkpoint
from .checkpoints import TRAIN_CHECKPOINT_FORMAT, load_upernet_weights
from .config import SegmentConfig
from .data import eval_protocol, eval_transform, open_split
from .inference import EvalProtocol, infer
from .metrics import confusion_matrix, segmentation_metrics
from .model import UPerNet, build_model, upernet

__all__ = ["evaluate", "evaluate_model", "load_segmenter"]


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    env: DistEnv,
    classes: list[str],
    protocol: EvalProtocol,
    *,
    amp: str = "none",
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics of :func:`~.metrics.segmentation_metrics` over the loader's images (``[1, 3, H,
    W]``, masks ``[1, H, W]``), each rank's confusion matrix summed over ranks."""
    was_training = model.training
    model.eval()
    num_classes = len(classes)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for image, mask in tqdm(
        loader, desc="eval", leave=False, disable=not (progress and env.is_main)
    ):
        probs = infer(model, image.to(env.device), protocol, amp=amp)
        confusion += confusion_matrix(probs.argmax(dim=1).cpu(), mask, num_classes)
    model.train(was_training)
    summed = all_reduce_sum(confusion.flatten().double().tolist(), env)
    confusion = torch.tensor(summed, dtype=torch.float64).round().long().view_as(confusion)
    return segmentation_metrics(confusion, classes)


def load_segmenter(
    checkpoint: str | os.PathLike[str],
    *,
    backbone: str | None = None,
    num_classes: int | None = None,
) -> tuple[UPerNet, SegmentConfig | None, list[str] | None]:
    """The model of a training checkpoint (its config and classes with it), or ``backbone`` with
    ``num_classes`` for an mmsegmentation checkpoint. In eval mode."""
    state = load_checkpoint(checkpoint)
    if state.get("format") == TRAIN_CHECKPOINT_FORMAT:
        config = SegmentConfig.from_dict(state["config"])
        classes = list(state["classes"])
        model = build_model(config, len(classes))
    else:
        if backbone is None or num_classes is None:
            raise ValueError(
                f"checkpoint {str(checkpoint)!r} is not a nat segment training checkpoint: give "
                f"the backbone (e.g. nat_tiny) and the data (for its classes)"
            )
        config, classes = None, None
        model = upernet(backbone, num_classes)
    load_upernet_weights(model, checkpoint, state=state)
    return model.eval(), config, classes


def evaluate(
    checkpoint: str | os.PathLike[str],
    *,
    data: str | None = None,
    split: str = "val",
    backbone: str | None = None,
    multi_scale: bool = False,
    flip: bool = False,
    mode: str | None = None,
    scale: Sequence[int] | None = None,
    max_samples: int | None = None,
    workers: int = 2,
    amp: str = "none",
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` of ``data`` (default: the data it was trained on) with
    the paper's protocol (single scale, or ``multi_scale`` and ``flip``; ``mode`` whole or
    slide; ``scale`` (long, short) instead of the trained one). Returns ``miou``, ``macc``,
    ``aacc``, ``per_class`` and what was evaluated."""
    env = init_distributed(device)
    state_config = None
    if data is None:
        state = load_checkpoint(checkpoint)
        if state.get("format") != TRAIN_CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {str(checkpoint)!r} does not say its data: give --data")
        state_config = SegmentConfig.from_dict(state["config"])
    base = state_config or SegmentConfig(data=data)
    if data is not None:
        base = base.replace(data=data)
    dataset, data_classes, name = open_split(base, split)
    model, config, classes = load_segmenter(
        checkpoint, backbone=backbone, num_classes=len(data_classes)
    )
    if classes is not None and classes != data_classes:
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} was trained on {len(classes)} classes "
            f"({', '.join(classes[:5])}, ...) but {name} has {len(data_classes)} "
            f"({', '.join(data_classes[:5])}, ...)"
        )
    protocol = eval_protocol(
        config.replace(data=base.data) if config else base,
        multi_scale=multi_scale,
        flip=flip,
        mode=mode,
        scale=scale,
    )
    dataset.transform = eval_transform()
    loader = eval_loader(limit(dataset, max_samples), 1, env, workers=workers)
    model.to(env.device)
    metrics = evaluate_model(model, loader, env, data_classes, protocol, amp=amp, progress=progress)
    return {
        "checkpoint": str(checkpoint),
        "data": name,
        "split": split,
        "images": len(loader.dataset),
        "protocol": asdict(protocol),
        **metrics,
    }
