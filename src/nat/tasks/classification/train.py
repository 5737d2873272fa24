"""Training: timm's parts (transforms, Mixup/CutMix, losses, optimizer, scheduler, EMA) joined by a
loop that runs the same in one process or many (DDP under ``torchrun``) and resumes exactly.

Exact resume: a checkpoint is written at the end of every epoch with the model, optimizer,
scheduler, grad scaler, EMA, every rank's RNG states and the settings. Shuffling and worker seeds
depend only on (seed, epoch, rank), and evaluation draws no global random numbers, so a run killed
at any moment and resumed repeats the interrupted epoch and ends bit-identical (on CPU) to an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ...data import (
    DIGITS,
    DIGITS_CLASSES,
    create_classification_dataset,
    create_eval_transform,
    create_train_transform,
    dataset_classes,
)
from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .config import TrainConfig
from .distributed import DistEnv, all_reduce_sum, barrier, init_distributed
from .evaluate import autocast, evaluate
from .loaders import data_config_for, eval_loader, limit, seed_loader, train_loader
from .model import TRAIN_CHECKPOINT_FORMAT, create_classifier, load_classifier_weights

__all__ = ["BEST", "LAST", "TrainResult", "train"]

LAST, BEST = "last.pt", "best.pt"
METRICS, SUMMARY = "metrics.jsonl", "summary.json"

# Settings that may change when a run is resumed: they do not affect the numbers.
RUNTIME_SETTINGS = frozenset({"output", "workers", "device", "eval_batch_size"})


@dataclass
class TrainResult:
    summary: dict[str, Any]
    model: nn.Module
    output: Path


def train(
    config: TrainConfig, *, resume: str | os.PathLike[str] | None = None, progress: bool = True
) -> TrainResult:
    """Train ``config.model`` on ``config.data`` (the embedded digits when ``None``).

    Writes to ``config.output`` (default ``runs/<time>-<model>``): ``last.pt``/``best.pt``,
    ``metrics.jsonl`` (one line per epoch) and ``summary.json``; progress bars (``progress``) and
    one line per epoch go to stderr. Resumes from ``resume`` or, if the output directory already
    holds ``last.pt``, from there. Under ``torchrun`` every process calls this; rank 0 logs and
    writes files.
    """
    env = init_distributed(config.device)
    output = _output_dir(config, env)
    resume_path = Path(resume) if resume else output / LAST if (output / LAST).exists() else None
    state = load_checkpoint(resume_path) if resume_path else None
    if state is not None:
        config = _resumed_config(config, state, resume_path)
    amp = _resolve_amp(config.amp, env.device)
    if config.threads:
        torch.set_num_threads(config.threads)

    _seed_everything(config.seed)  # identical initial weights on every rank
    classes, train_set, val_set = _datasets(config)
    model = create_classifier(
        config.model,
        num_classes=len(classes),
        pretrained=config.pretrained,
        drop_path_rate=config.drop_path,
        drop_rate=config.drop_rate,
    )
    if config.initial_checkpoint:
        load_classifier_weights(model, config.initial_checkpoint, model_name=config.model)
    data_cfg, loader, val_loader = _loaders(config, model, env, train_set, val_set)

    model.to(env.device)
    global_batch = config.batch_size * env.world_size * config.grad_accum
    lr_scale = global_batch / config.lr_batch_size
    optimizer = _optimizer(model, config, lr_scale)
    updates_per_epoch = math.ceil(len(loader) / config.grad_accum)
    scheduler, total_epochs = create_scheduler_v2(
        optimizer,
        sched=config.sched,
        num_epochs=config.epochs,
        warmup_epochs=config.warmup_epochs,
        warmup_lr=config.warmup_lr * lr_scale,
        min_lr=config.min_lr * lr_scale,
        cooldown_epochs=config.cooldown_epochs,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    scaler = torch.amp.GradScaler(env.device.type, enabled=amp == "fp16")
    ema = ModelEmaV3(model, decay=config.model_ema_decay) if config.model_ema else None
    mixup = _mixup(config, len(classes))
    criterion = _criterion(config, mixup)

    start_epoch, num_updates, history = 0, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        start_epoch, num_updates, history = state["epoch"], state["num_updates"], state["history"]
        rng = state["rng"]
        if len(rng) != env.world_size:
            raise ValueError(
                f"{resume_path} was written by {len(rng)} process(es); resume it with as many "
                f"(got {env.world_size})"
            )
        restore_rng_state(rng[env.rank])
    else:
        _seed_everything(config.seed + env.rank)
    best = max(history, key=lambda h: h["top1"]) if history else None
    if env.is_main:
        output.mkdir(parents=True, exist_ok=True)
        _write_metrics(output / METRICS, history)
        if best is not None and best["epoch"] == start_epoch:  # killed before linking best.pt
            _link_atomic(resume_path, output / BEST)
        what = f"resuming {resume_path} after epoch {start_epoch}" if state else "training"
        print(
            f"{what}: {config.model} on {config.data or DIGITS}, {len(loader.dataset)} images, "
            f"{env.world_size} process(es) x batch {config.batch_size}, output {output}",
            file=sys.stderr,
        )

    train_model: nn.Module = model
    if env.distributed:
        train_model = DistributedDataParallel(
            model, device_ids=[env.device] if env.device.type == "cuda" else None
        )
    for epoch in range(start_epoch, total_epochs):
        seed_loader(loader, config.seed, epoch, env.rank)
        stats = _train_one_epoch(
            train_model,
            loader,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            criterion=criterion,
            mixup=mixup,
            ema=ema,
            config=config,
            amp=amp,
            env=env,
            num_updates=num_updates,
            desc=f"epoch {epoch + 1}/{total_epochs}",
            progress=progress,
        )
        num_updates = stats.pop("num_updates")
        metrics = evaluate(model, val_loader, env, amp=amp)
        record = {"epoch": epoch + 1, **stats, **{k: metrics[k] for k in ("top1", "top5", "loss")}}
        record["val_loss"] = record.pop("loss")
        if ema is not None:
            ema_metrics = evaluate(ema.module, val_loader, env, amp=amp)
            record.update(ema_top1=ema_metrics["top1"], ema_top5=ema_metrics["top5"])
        history.append(record)
        is_best = best is None or record["top1"] > best["top1"]
        best = record if is_best else best
        rng_states = _gather(capture_rng_state(), env)
        if env.is_main:
            checkpoint = {
                "format": TRAIN_CHECKPOINT_FORMAT,
                "config": config.to_dict(),
                "classes": list(classes),
                "data_config": data_cfg,
                "epoch": epoch + 1,
                "num_updates": num_updates,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
                "rng": rng_states,
                "history": history,
            }
            save_checkpoint(checkpoint, output / LAST)
            if is_best:
                _link_atomic(output / LAST, output / BEST)
            _append_metrics(output / METRICS, record)
            tqdm.write(_epoch_line(record, best, total_epochs), file=sys.stderr)
        barrier(env)

    summary = _summary(config, history, best, output, total_epochs)
    if env.is_main:
        _write_json(output / SUMMARY, summary)
    barrier(env)
    return TrainResult(summary=summary, model=model, output=output)


def _train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    criterion: nn.Module,
    mixup: Mixup | None,
    ema: ModelEmaV3 | None,
    config: TrainConfig,
    amp: str,
    env: DistEnv,
    num_updates: int,
    desc: str,
    progress: bool,
) -> dict[str, Any]:
    model.train()
    steps = len(loader)
    loss_sum, seen = torch.zeros((), dtype=torch.float64, device=env.device), 0
    refresh = max(1, steps // 100)  # reading the loss syncs a GPU: only for the bar, now and then
    bar = tqdm(total=steps, desc=desc, leave=False, disable=not (progress and env.is_main))
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for step, (images, targets) in enumerate(loader):
        images = images.to(env.device, non_blocking=True)
        targets = targets.to(env.device, non_blocking=True)
        if mixup is not None:
            images, targets = mixup(images, targets)
        group_start = step - step % config.grad_accum
        micro_steps = min(config.grad_accum, steps - group_start)
        update = step + 1 == group_start + micro_steps
        sync = model.no_sync() if env.distributed and not update else contextlib.nullcontext()
        with sync:
            with autocast(env.device, amp):
                loss = criterion(model(images), targets)
            scaler.scale(loss / micro_steps).backward()
        if update:
            if config.clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            num_updates += 1
            scheduler.step_update(num_updates=num_updates)
            if ema is not None:
                ema.update(model.module if env.distributed else model, step=num_updates)
        loss_sum += loss.detach() * images.shape[0]
        seen += images.shape[0]
        bar.update()
        if bar.disable or ((step + 1) % refresh and step + 1 < steps):
            continue
        elapsed = time.perf_counter() - start
        bar.set_postfix(
            loss=f"{loss_sum.item() / seen:.4f}",
            lr=f"{optimizer.param_groups[0]['lr']:.2e}",
            img_s=f"{seen * env.world_size / max(elapsed, 1e-9):.0f}",
        )
    bar.close()
    seconds = time.perf_counter() - start
    loss_sum, seen = all_reduce_sum([loss_sum.item(), seen], env)
    return {
        "train_loss": loss_sum / seen,
        "lr": optimizer.param_groups[0]["lr"],
        "train_seconds": seconds,
        "images_per_second": seen / seconds,
        "num_updates": num_updates,
    }


def _loaders(
    config: TrainConfig, model: nn.Module, env: DistEnv, train_set: Any, val_set: Any
) -> tuple[dict[str, Any], DataLoader, DataLoader]:
    """The model's data config (with the config's overrides) and the two loaders."""
    data_cfg = data_config_for(
        model,
        input_size=config.input_size,
        interpolation=config.interpolation,
        crop_pct=config.crop_pct,
        mean=config.mean,
        std=config.std,
    )
    if train_set is None:
        train_set, val_set = (
            create_classification_dataset(DIGITS, s, image_size=data_cfg["input_size"][-1])
            for s in ("train", "val")
        )
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
    )
    return data_cfg, loader, val_loader


def _datasets(config: TrainConfig) -> tuple[list[str], Any, Any]:
    """Class names and the two splits; for the digits the splits wait for the input size."""
    if config.data is None or (config.data == DIGITS and not config.dataset):
        classes: list[str] | None = list(DIGITS_CLASSES)
        train_set = val_set = None
    else:
        kwargs = {"dataset": config.dataset, "skip_bad_images": config.skip_bad_images}
        train_set = create_classification_dataset(config.data, "train", **kwargs)
        val_set = create_classification_dataset(config.data, "val", **kwargs)
        classes = dataset_classes(train_set)
    if classes is None:
        if config.num_classes is None:
            raise ValueError(f"cannot tell the classes of {config.data}; set num_classes")
        classes = [str(i) for i in range(config.num_classes)]
    if config.num_classes is not None and config.num_classes != len(classes):
        raise ValueError(
            f"num_classes mismatch: num_classes={config.num_classes} but "
            f"{config.data or DIGITS} has {len(classes)} classes"
        )
    return classes, train_set, val_set


def _optimizer(model: nn.Module, config: TrainConfig, lr_scale: float) -> torch.optim.Optimizer:
    """AdamW (or any timm optimizer) without weight decay on norms, biases and RPB tables."""
    no_decay = {"*rpb", *getattr(model, "no_weight_decay", set)()}
    groups = param_groups_weight_decay(
        model, config.weight_decay, no_weight_decay_list=sorted(no_decay)
    )
    extra: dict[str, Any] = {}
    if "adam" in config.opt.lower() or "lamb" in config.opt.lower():
        extra.update(eps=config.opt_eps, betas=tuple(config.opt_betas))
    return create_optimizer_v2(
        groups, opt=config.opt, lr=config.lr * lr_scale, weight_decay=config.weight_decay, **extra
    )


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


def _resolve_amp(amp: str, device: torch.device) -> str:
    if amp not in ("auto", "none", "bf16", "fp16"):
        raise ValueError(f"amp={amp!r} must be one of auto, none, bf16, fp16")
    if amp == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if cuda_bf16 else "fp16" if device.type == "cuda" else "none"
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs a CUDA device; use bf16 on CPU")
    return amp


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _output_dir(config: TrainConfig, env: DistEnv) -> Path:
    """``config.output``, else a new ``runs/<UTC time>-<model>`` agreed on by all ranks."""
    if config.output:
        return Path(config.output)
    name = [f"runs/{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{config.model}"]
    if env.distributed:
        dist.broadcast_object_list(name, src=0)
    return Path(name[0])


def _resumed_config(config: TrainConfig, state: dict[str, Any], path: Path) -> TrainConfig:
    """The checkpoint's settings; requested settings that would change the numbers are errors."""
    if state.get("format") != TRAIN_CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint of this package; cannot resume")
    saved = TrainConfig.from_dict(state["config"])
    mine = config.to_dict()
    changed = [
        f"{k}: {v!r} -> {mine[k]!r}"
        for k, v in saved.to_dict().items()
        if k not in RUNTIME_SETTINGS and v != mine[k]
    ]
    if changed:
        raise ValueError(
            f"cannot resume {path} with different settings ({'; '.join(changed)}); "
            "use another output directory"
        )
    return saved.replace(**{k: mine[k] for k in RUNTIME_SETTINGS})


def _gather(obj: Any, env: DistEnv) -> list[Any]:
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def _link_atomic(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` (a hard link renamed into place)."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.link(src, tmp)
    os.replace(tmp, dst)


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the log from the checkpoint's history, so a resumed run's log has each epoch once."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
    os.replace(tmp, path)


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _summary(
    config: TrainConfig,
    history: list[dict[str, Any]],
    best: dict[str, Any] | None,
    output: Path,
    total_epochs: int,
) -> dict[str, Any]:
    if not history:
        raise ValueError(f"no epochs to train (epochs={config.epochs})")
    last = history[-1]
    seconds = sum(h["train_seconds"] for h in history)
    images = sum(h["train_seconds"] * h["images_per_second"] for h in history)
    return {
        "model": config.model,
        "data": config.data or DIGITS,
        "top1": last["top1"],
        "top5": last["top5"],
        "best_top1": best["top1"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "epochs": last["epoch"],
        "planned_epochs": total_epochs,
        "train_seconds": seconds,
        "images_per_second": images / seconds if seconds else 0.0,
        "checkpoint": str(output / LAST),
        "best_checkpoint": str(output / BEST),
        "output": str(output),
    }


def _epoch_line(record: dict[str, Any], best: dict[str, Any], total_epochs: int) -> str:
    return (
        f"epoch {record['epoch']:>3}/{total_epochs}  loss {record['train_loss']:.4f}  "
        f"lr {record['lr']:.2e}  top1 {record['top1']:6.2f}  top5 {record['top5']:6.2f}  "
        f"{record['images_per_second']:.0f} img/s  {record['train_seconds']:.1f}s  "
        f"(best {best['top1']:.2f} @ {best['epoch']})"
    )
