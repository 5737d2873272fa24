"""Training a detector on the engine's fit loop (:func:`nat.engine.fit`): AdamW without decay on
norms, biases and the RPB tables, x0.1 steps at the milestones after a linear warm-up, mixed
precision, DDP under ``torchrun`` (BatchNorm of the cascade heads synchronised on GPUs), exact
resume; COCO box and mask AP on the validation split after every epoch."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import MultiStepLRScheduler
from torch import nn

from ...data.coco import (
    CocoInstances,
    detection_collate,
    detection_eval_transform,
    detection_train_transform,
)
from ...data.shapes import make_shapes_dataset
from ...engine import (
    DistEnv,
    RunDirectory,
    barrier,
    eval_loader,
    fit,
    fused_kwargs,
    limit,
    resolve_amp,
    seed_everything,
    train_in_run_directory,
    train_loader,
)
from .config import DetectConfig
from .evaluate import evaluate
from .model import create_detector
from .weights import load_detector_weights

__all__ = [
    "RUNTIME_SETTINGS",
    "TRAIN_CHECKPOINT_FORMAT",
    "TrainResult",
    "create_optimizer",
    "open_split",
    "step_schedule",
    "train",
]

TRAIN_CHECKPOINT_FORMAT = "nat-detection-train-v1"
RUNTIME_SETTINGS = frozenset({"output", "workers", "device", "eval_batch_size", "epochs"})
"""Settings that may change when a run is resumed: where its files go, the device, the data
loading and ``epochs`` (the learning rate depends on the milestones, not on ``epochs``, so a run
can be resumed for more epochs). A different ``workers`` draws other random augmentations from
there on, so the resumed run is then not bit-identical to an uninterrupted one."""
SHAPES_SEED = 0
"""The synthetic dataset is the same for every run (the training seed does not change it)."""


@dataclass
class TrainResult:
    summary: dict[str, Any]
    model: nn.Module
    output: Path
    is_main: bool = True


def data_root(config: DetectConfig, synthetic_dir: Path, env: DistEnv) -> Path:
    """``config.data``, or the synthetic shapes dataset written (by rank 0) to
    ``synthetic_dir``."""
    if config.data is not None:
        return Path(config.data)
    train, val = config.synthetic_images
    if env.is_main and not (synthetic_dir / config.val_annotations).is_file():
        make_shapes_dataset(
            synthetic_dir,
            train_images=train,
            val_images=val,
            size=config.synthetic_size,
            seed=SHAPES_SEED,
        )
    barrier(env)
    return synthetic_dir


def open_split(
    config: DetectConfig, root: Path, split: str, num_classes: int | None = None
) -> CocoInstances:
    """The ``train`` (augmented, images without annotations left out) or ``val`` split."""
    images, annotations = (
        (config.train_images, config.train_annotations)
        if split == "train"
        else (config.val_images, config.val_annotations)
    )
    if split == "train":
        transforms = detection_train_transform(
            config.train_scales, config.max_size, config.crop_scales, config.crop_range
        )
    else:
        transforms = detection_eval_transform()
    return CocoInstances(
        root / images,
        root / annotations,
        transforms=transforms,
        skip_empty=split == "train",
        num_classes=num_classes,
    )


def train(
    config: DetectConfig, *, resume: str | os.PathLike[str] | None = None, progress: bool = True
) -> TrainResult:
    """Train ``config.architecture`` on ``config.data`` (the synthetic shapes when ``None``).

    Writes to ``config.output`` (default ``runs/<time>-<architecture>``; see
    :class:`nat.engine.RunDirectory`), resuming from ``resume`` or the directory's ``last.pt``.
    Under ``torchrun`` every process calls this; rank 0 writes files.
    """
    summary, model, output, env = train_in_run_directory(
        config,
        resume,
        progress,
        name=config.architecture,
        settings_format=TRAIN_CHECKPOINT_FORMAT,
        runtime=RUNTIME_SETTINGS,
        train=_train,
    )
    return TrainResult(summary=summary, model=model, output=output, is_main=env.is_main)


def _train(
    config: DetectConfig,
    env: DistEnv,
    run: RunDirectory,
    state: dict[str, Any] | None,
    resume_path: Path | None,
    progress: bool,
) -> tuple[dict[str, Any], nn.Module]:
    amp = resolve_amp(config.amp, env.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    root = data_root(config, run.path / "shapes", env)
    train_set = open_split(config, root, "train", config.num_classes)
    val_set = open_split(config, root, "val", config.num_classes)
    if val_set.category_ids != train_set.category_ids:
        raise ValueError(
            f"the categories of {val_set.annotations} ({val_set.category_ids}) differ from "
            f"those of {train_set.annotations} ({train_set.category_ids})"
        )
    num_classes = config.num_classes or len(train_set.category_ids) + 1

    seed_everything(config.seed)  # identical initial weights on every rank
    model = create_detector(
        config.architecture, config.backbone, num_classes, **config.model_kwargs()
    )
    if config.initial_checkpoint:
        load_detector_weights(model, config.initial_checkpoint)
    model.to(env.device)
    if env.distributed and env.device.type != "cpu":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    loader = train_loader(
        limit(train_set, config.max_train_samples),
        config.batch_size,
        env,
        seed=config.seed,
        workers=config.workers,
        collate_fn=detection_collate,
    )
    val_loader = eval_loader(
        limit(val_set, config.max_val_samples),
        config.eval_batch_size or config.batch_size,
        env,
        workers=config.workers,
        collate_fn=detection_collate,
    )
    lr = config.lr * config.batch_size * env.world_size / config.lr_batch_size
    optimizer = create_optimizer(model, config, lr)
    scheduler = step_schedule(optimizer, config, updates_per_epoch=len(loader))
    scaler = torch.amp.GradScaler(env.device.type, enabled=amp == "fp16")

    def loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        images, targets = batch
        images = [im.to(env.device, non_blocking=True) for im in images]
        targets = [_to_device(t, env.device) for t in targets]
        losses = model(images, targets)
        return sum(losses.values()), len(images)

    def metrics(model: nn.Module) -> dict[str, float]:
        scores, _ = evaluate(model, val_loader, val_set, env, amp=amp)
        return scores

    result = fit(
        model,
        loader,
        loss=loss,
        metrics=metrics,
        score="bbox_AP",
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=config.epochs,
        run=run,
        env=env,
        scaler=scaler,
        clip_grad=config.clip_grad,
        amp=amp,
        seed=config.seed,
        checkpoint={
            "format": TRAIN_CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "num_classes": num_classes,
            "categories": train_set.categories,
            "category_ids": train_set.category_ids,
        },
        resume=state,
        resumed_from=resume_path,
        describe=(
            f"{config.architecture} ({config.backbone}) on {root}, {len(loader.dataset)} images "
            f"({_skips(train_set)}), {env.world_size} process(es) x batch {config.batch_size}"
        ),
        progress=progress,
    )
    last = result.history[-1]
    summary = {
        "architecture": config.architecture,
        "backbone": config.backbone,
        "data": str(root),
        **{k: v for k, v in last.items() if k.startswith(("bbox_", "segm_"))},
        "best_bbox_AP": result.best["bbox_AP"] if result.best else None,
        "best_epoch": result.best["epoch"] if result.best else None,
        "epochs": last["epoch"],
        "train_seconds": sum(h["train_seconds"] for h in result.history),
        "checkpoint": str(run.last),
        "best_checkpoint": str(run.best),
        "output": str(run.path),
    }
    return summary, model


def create_optimizer(model: nn.Module, config: DetectConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW at ``lr`` (fused where it can be, :func:`~nat.engine.fused_kwargs`); timm exempts
    1-D parameters (norms, biases) and the model's ``no_weight_decay()`` (the backbone's RPB
    tables) from weight decay."""
    return create_optimizer_v2(
        model,
        opt="adamw",
        lr=lr,
        weight_decay=config.weight_decay,
        betas=tuple(config.opt_betas),
        **fused_kwargs(model, "adamw"),
    )


def step_schedule(
    optimizer: torch.optim.Optimizer, config: DetectConfig, *, updates_per_epoch: int
) -> MultiStepLRScheduler:
    """x0.1 after each milestone epoch, after a linear warm-up over ``warmup_iters`` updates
    from ``warmup_ratio`` x the optimizer's lr (mmdetection's ``step`` policy), per update."""
    lr = optimizer.param_groups[0]["lr"]
    return MultiStepLRScheduler(
        optimizer,
        # timm applies a milestone d from update d - 1 on: epoch m's last update keeps the lr
        decay_t=[m * updates_per_epoch + 1 for m in config.milestones],
        decay_rate=0.1,
        warmup_t=config.warmup_iters,
        warmup_lr_init=lr * config.warmup_ratio,
        warmup_prefix=False,
        t_in_epochs=False,
    )


def _skips(dataset: CocoInstances) -> str:
    counts = {k: v for k, v in dataset.skipped.items() if v}
    return "skipped: " + ", ".join(f"{v} {k}" for k, v in counts.items()) if counts else "no skips"


def _to_device(target: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.as_subclass(torch.Tensor).to(device, non_blocking=True)
        if isinstance(v, torch.Tensor)
        else v
        for k, v in target.items()
    }
