"""Training UPerNet on the engine's fit loop: AdamW without weight decay on norms, biases and
RPB tables, linear warm-up then poly decay per iteration, cross-entropy on the decode head plus
0.4 x the auxiliary head's, SyncBatchNorm under DDP on GPUs, mixed precision, exact resume.

An engine epoch is ``eval_interval`` iterations drawn from an endless shuffled stream over the
training set (:func:`nat.engine.iteration_loader`), followed by evaluation (mIoU picks
``best.pt``) and a checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import PolyLRScheduler
from torch import nn

from ...data.segmentation import IGNORE_INDEX
from ...engine import (
    DistEnv,
    RunDirectory,
    eval_loader,
    fit,
    fused_kwargs,
    iteration_loader,
    limit,
    resolve_amp,
    seed_everything,
    train_in_run_directory,
)
from .checkpoints import TRAIN_CHECKPOINT_FORMAT, load_upernet_weights
from .config import SegmentConfig
from .data import eval_protocol, eval_transform, open_split, train_transform
from .evaluate import evaluate_model
from .model import build_model, sync_batchnorm

__all__ = ["RUNTIME_SETTINGS", "SegmentResult", "segmentation_loss", "train"]

RUNTIME_SETTINGS = frozenset({"output", "workers", "device"})
"""Settings that may change when a run is resumed: where its files go, the device and the
data loading, not the model, data or recipe. (A different ``workers`` draws other random
augmentations from there on, so the resumed run is then not bit-identical to an uninterrupted
one.)"""


@dataclass
class SegmentResult:
    summary: dict[str, Any]
    model: nn.Module
    output: Path
    is_main: bool = True


def segmentation_loss(
    output: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    masks: torch.Tensor,
    aux_weight: float,
) -> torch.Tensor:
    """Pixel cross-entropy averaged over all pixels (ignored ones count as zero, as in
    mmsegmentation), plus ``aux_weight`` times the auxiliary head's. ``output``: logits
    ``[B, C, H, W]`` or ``(logits, aux_logits)``; ``masks``: ``[B, H, W]``."""
    logits, aux = output if isinstance(output, tuple) else (output, None)

    def pixel_ce(x: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(x.float(), masks, ignore_index=IGNORE_INDEX, reduction="none").mean()

    loss = pixel_ce(logits)
    if aux is not None:
        loss = loss + aux_weight * pixel_ce(aux)
    return loss


def train(
    config: SegmentConfig, *, resume: str | os.PathLike[str] | None = None, progress: bool = True
) -> SegmentResult:
    """Train the UPerNet ``config`` describes on ``config.data`` (the synthetic scenes when
    ``None``); the run directory, resume, DDP and stops are the engine's (see
    :func:`nat.tasks.classification.train`)."""
    summary, model, output, env = train_in_run_directory(
        config,
        resume,
        progress,
        name=f"upernet-{config.backbone}",
        settings_format=TRAIN_CHECKPOINT_FORMAT,
        runtime=RUNTIME_SETTINGS,
        train=_train,
    )
    return SegmentResult(summary=summary, model=model, output=output, is_main=env.is_main)


def _train(
    config: SegmentConfig,
    env: DistEnv,
    run: RunDirectory,
    state: dict[str, Any] | None,
    resume_path: Path | None,
    progress: bool,
) -> tuple[dict[str, Any], nn.Module]:
    amp = resolve_amp(config.amp, env.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    train_set, classes, name = open_split(config, "train")
    val_set, val_classes, _ = open_split(config, "val")
    if val_classes != classes:
        raise ValueError(f"{name}: the val split's classes differ from the train split's")
    train_set.transform, val_set.transform = train_transform(config), eval_transform()

    seed_everything(config.seed)  # identical initial weights on every rank
    model = build_model(config, len(classes), pretrained=config.pretrained and state is None)
    if config.initial_checkpoint and state is None:
        load_upernet_weights(model, config.initial_checkpoint)
    if env.distributed:
        model = sync_batchnorm(model, env.device)
    model.to(env.device)

    loader = iteration_loader(
        limit(train_set, config.max_train_samples),
        config.batch_size,
        env,
        iterations=config.eval_interval,
        seed=config.seed,
        workers=config.workers,
    )
    val_loader = eval_loader(limit(val_set, config.max_val_samples), 1, env, workers=config.workers)
    optimizer = create_optimizer_v2(
        model,
        opt="adamw",
        lr=config.lr,
        weight_decay=config.weight_decay,
        betas=tuple(config.opt_betas),
        **fused_kwargs(model, "adamw"),
    )
    scheduler = PolyLRScheduler(
        optimizer,
        t_initial=config.iterations,
        power=config.power,
        lr_min=config.min_lr,
        warmup_t=config.warmup_iters,
        warmup_lr_init=config.lr * config.warmup_ratio,
        t_in_epochs=False,
    )
    scaler = torch.amp.GradScaler(env.device.type, enabled=amp == "fp16")
    protocol = eval_protocol(config)

    def loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        images, masks = (t.to(env.device, non_blocking=True) for t in batch)
        return segmentation_loss(model(images), masks, config.aux_weight), images.shape[0]

    def metrics(model: nn.Module) -> dict[str, float]:
        result = evaluate_model(model, val_loader, env, classes, protocol, amp=amp)
        return {k: result[k] for k in ("miou", "macc", "aacc")}

    result = fit(
        model,
        loader,
        loss=loss,
        metrics=metrics,
        score="miou",
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=config.iterations // config.eval_interval,
        run=run,
        env=env,
        scaler=scaler,
        clip_grad=config.clip_grad,
        amp=amp,
        seed=config.seed,
        checkpoint={
            "format": TRAIN_CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "classes": classes,
        },
        resume=state,
        resumed_from=resume_path,
        describe=(
            f"UPerNet-{config.backbone} on {name} ({len(loader.dataset)} images, "
            f"{len(classes)} classes), {env.world_size} process(es) x batch {config.batch_size}, "
            f"{config.iterations} iterations"
        ),
        progress=progress,
    )
    last, best = result.history[-1], result.best
    summary = {
        "backbone": config.backbone,
        "data": name,
        "miou": last["miou"],
        "macc": last["macc"],
        "aacc": last["aacc"],
        "best_miou": best["miou"] if best else None,
        "iterations": last["epoch"] * config.eval_interval,
        "train_seconds": sum(h["train_seconds"] for h in result.history),
        "checkpoint": str(run.last),
        "best_checkpoint": str(run.best),
        "output": str(run.path),
    }
    return summary, model
