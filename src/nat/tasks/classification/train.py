"""Training an image classifier: timm's parts (transforms, Mixup/CutMix, losses, optimizer,
scheduler, EMA) on the engine's fit loop (:func:`nat.engine.fit`), in one process or many (DDP
under ``torchrun``), resuming exactly.

Shuffling and worker seeds depend only on (seed, epoch, rank), and evaluation draws no global
random numbers, so a run killed at any moment and resumed (with the same ``workers``) ends
bit-identical (on CPU) to an uninterrupted one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn

from ...data import check_classes, create_eval_transform, create_train_transform, drop_skipped
from ...engine import (
    DistEnv,
    RunDirectory,
    eval_loader,
    fit,
    fused_kwargs,
    limit,
    resolve_amp,
    seed_everything,
    train_in_run_directory,
    train_loader,
)
from .config import TrainConfig
from .evaluate import evaluate
from .loaders import ImageSplit, data_config_for
from .model import TRAIN_CHECKPOINT_FORMAT, create_classifier, load_classifier_weights

__all__ = ["RUNTIME_SETTINGS", "TrainResult", "create_optimizer", "train"]

RUNTIME_SETTINGS = frozenset({"output", "workers", "device", "eval_batch_size"})
"""Settings that may change when a run is resumed: where its files go, the device and the
data loading, not the model, data or recipe. (A different ``workers`` draws other random
augmentations from there on, so the resumed run is then not bit-identical to an uninterrupted
one.)"""


@dataclass
class TrainResult:
    summary: dict[str, Any]
    model: nn.Module
    output: Path
    is_main: bool = True
    """Whether this process is rank 0 (the one that writes files and reports)."""


def train(
    config: TrainConfig, *, resume: str | os.PathLike[str] | None = None, progress: bool = True
) -> TrainResult:
    """Train ``config.model`` on ``config.data`` (the embedded digits when ``None``).

    Writes to ``config.output`` (default ``runs/<time>-<model>``), see
    :class:`nat.engine.RunDirectory`; progress bars (``progress``) and one line per epoch go to
    stderr. Resumes from ``resume`` or, if the output directory already holds ``last.pt``, from
    there. Under ``torchrun`` every process calls this; rank 0 logs and writes files. A second
    run on the same output directory raises :class:`nat.engine.RunLockedError`, a non-finite
    loss :class:`nat.engine.NonFiniteLossError`.
    """
    summary, model, output, env = train_in_run_directory(
        config,
        resume,
        progress,
        name=config.model,
        settings_format=TRAIN_CHECKPOINT_FORMAT,
        runtime=RUNTIME_SETTINGS,
        train=_train,
    )
    return TrainResult(summary=summary, model=model, output=output, is_main=env.is_main)


def _train(
    config: TrainConfig,
    env: DistEnv,
    run: RunDirectory,
    state: dict[str, Any] | None,
    resume_path: Path | None,
    progress: bool,
) -> tuple[dict[str, Any], nn.Module]:
    amp = resolve_amp(config.amp, env.device)
    if config.threads:
        torch.set_num_threads(config.threads)

    seed_everything(config.seed)  # identical initial weights on every rank
    train_split = ImageSplit(
        config.data, "train", dataset=config.dataset, skip_bad_images=config.skip_bad_images
    )
    val_split = ImageSplit(
        config.data, "val", dataset=config.dataset, skip_bad_images=config.skip_bad_images
    )
    classes = _classes(config, train_split)
    if val_split.classes is not None:
        check_classes(classes, val_split.classes, f"{val_split.name} val split against train")
    model = create_classifier(
        config.model,
        num_classes=len(classes),
        pretrained=config.pretrained,
        drop_path_rate=config.drop_path,
        drop_rate=config.drop_rate,
    )
    if config.initial_checkpoint:
        load_classifier_weights(model, config.initial_checkpoint, model_name=config.model)
    data_cfg = data_config_for(
        model,
        input_size=config.input_size,
        interpolation=config.interpolation,
        crop_pct=config.crop_pct,
        mean=config.mean,
        std=config.std,
    )
    train_set, val_set = (s.open(data_cfg["input_size"][-1]) for s in (train_split, val_split))
    train_set.transform = create_train_transform(
        data_cfg,
        scale=config.scale,
        ratio=config.ratio,
        hflip=config.hflip,
        color_jitter=config.color_jitter,
        auto_augment=config.auto_augment,
        interpolation=config.train_interpolation,
        re_prob=config.re_prob,
        re_mode=config.re_mode,
        re_count=config.re_count,
    )
    val_set.transform = create_eval_transform(data_cfg)
    loader = train_loader(
        limit(train_set, config.max_train_samples),
        config.batch_size,
        env,
        seed=config.seed,
        workers=config.workers,
    )
    val_loader = eval_loader(
        limit(val_set, config.max_val_samples),
        config.eval_batch_size or 2 * config.batch_size,
        env,
        workers=config.workers,
        collate_fn=drop_skipped,
    )

    model.to(env.device)
    global_batch = config.batch_size * env.world_size * config.grad_accum
    lr_scale = global_batch / config.lr_batch_size
    optimizer = create_optimizer(model, config, lr_scale=lr_scale)
    scheduler, total_epochs = create_scheduler_v2(
        optimizer,
        sched=config.sched,
        num_epochs=config.epochs,
        warmup_epochs=config.warmup_epochs,
        warmup_lr=config.warmup_lr * lr_scale,
        min_lr=config.min_lr * lr_scale,
        cooldown_epochs=config.cooldown_epochs,
        step_on_epochs=False,
        updates_per_epoch=math.ceil(len(loader) / config.grad_accum),
    )
    scaler = torch.amp.GradScaler(env.device.type, enabled=amp == "fp16")
    ema = ModelEmaV3(model, decay=config.model_ema_decay) if config.model_ema else None
    mixup = _mixup(config, len(classes))
    criterion = _criterion(config, mixup)

    def loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        images, targets = batch
        images = images.to(env.device, non_blocking=True)
        targets = targets.to(env.device, non_blocking=True)
        if mixup is not None:
            images, targets = mixup(images, targets)
        return criterion(model(images), targets), images.shape[0]

    def metrics(model: nn.Module) -> dict[str, float]:
        result = evaluate(model, val_loader, env, amp=amp)
        return {"top1": result["top1"], "top5": result["top5"], "val_loss": result["loss"]}

    result = fit(
        model,
        loader,
        loss=loss,
        metrics=metrics,
        score="top1",
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=total_epochs,
        run=run,
        env=env,
        scaler=scaler,
        ema=ema,
        grad_accum=config.grad_accum,
        clip_grad=config.clip_grad,
        amp=amp,
        seed=config.seed,
        checkpoint={
            "format": TRAIN_CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "classes": list(classes),
            "data_config": data_cfg,
        },
        resume=state,
        resumed_from=resume_path,
        describe=(
            f"{config.model} on {train_split.name}, {len(loader.dataset)} images, "
            f"{env.world_size} process(es) x batch {config.batch_size}"
        ),
        progress=progress,
    )
    return _summary(config, train_split.name, result.history, result.best, run, total_epochs), model


def create_optimizer(
    model: nn.Module, config: TrainConfig, *, lr_scale: float = 1.0
) -> torch.optim.Optimizer:
    """``config.opt`` (AdamW by default, any timm optimizer) at ``config.lr * lr_scale``, fused
    where PyTorch has a fused kernel for it (:func:`~nat.engine.fused_kwargs`). timm exempts 1-D
    parameters (norms, biases) and the model's ``no_weight_decay()`` (NAT: the RPB tables) from
    weight decay."""
    extra: dict[str, Any] = {}
    if "adam" in config.opt.lower() or "lamb" in config.opt.lower():
        extra.update(eps=config.opt_eps, betas=tuple(config.opt_betas))
    return create_optimizer_v2(
        model,
        opt=config.opt,
        lr=config.lr * lr_scale,
        weight_decay=config.weight_decay,
        **extra,
        **fused_kwargs(model, config.opt),
    )


def _classes(config: TrainConfig, split: ImageSplit) -> list[str]:
    classes = split.classes
    if classes is None:
        if config.num_classes is None:
            raise ValueError(f"cannot tell the classes of {config.data}; set num_classes")
        classes = [str(i) for i in range(config.num_classes)]
    if config.num_classes is not None and config.num_classes != len(classes):
        raise ValueError(
            f"num_classes mismatch: num_classes={config.num_classes} but "
            f"{split.name} has {len(classes)} classes"
        )
    return classes


def _mixup(config: TrainConfig, num_classes: int) -> Mixup | None:
    if not (config.mixup > 0 or config.cutmix > 0):
        return None
    if config.batch_size % 2:
        raise ValueError(f"Mixup/CutMix needs an even batch_size, got {config.batch_size}")
    return Mixup(
        mixup_alpha=config.mixup,
        cutmix_alpha=config.cutmix,
        prob=config.mixup_prob,
        switch_prob=config.mixup_switch_prob,
        mode=config.mixup_mode,
        label_smoothing=config.smoothing,
        num_classes=num_classes,
    )


def _criterion(config: TrainConfig, mixup: Mixup | None) -> nn.Module:
    if mixup is not None:
        return SoftTargetCrossEntropy()
    if config.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=config.smoothing)
    return nn.CrossEntropyLoss()


def _summary(
    config: TrainConfig,
    data: str,
    history: list[dict[str, Any]],
    best: dict[str, Any] | None,
    run: RunDirectory,
    total_epochs: int,
) -> dict[str, Any]:
    if not history:
        raise ValueError(f"no epochs to train (epochs={config.epochs})")
    last = history[-1]
    seconds = sum(h["train_seconds"] for h in history)
    images = sum(h["train_seconds"] * h["images_per_second"] for h in history)
    return {
        "model": config.model,
        "data": data,
        "top1": last["top1"],
        "top5": last["top5"],
        "best_top1": best["top1"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "epochs": last["epoch"],
        "planned_epochs": total_epochs,
        "train_seconds": seconds,
        "images_per_second": images / seconds if seconds else 0.0,
        "checkpoint": str(run.last),
        "best_checkpoint": str(run.best),
        "output": str(run.path),
    }
