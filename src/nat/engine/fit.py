"""The fit loop every task runs: epochs of (accumulated) optimizer steps, evaluation, checkpoints.

A task hands over a model, a training loader, a loss callback and a metrics callback; the loop
owns the rest: DDP wrapping, mixed precision, gradient accumulation and clipping, the EMA, the
scheduler's per-update steps, progress (a bar and one line per epoch on stderr), and after every
epoch a checkpoint with every rank's RNG states, so a run killed at any moment and resumed repeats
the interrupted epoch and ends bit-identical (on CPU) to an uninterrupted one.

A non-finite training loss stops the run on every rank at once, before the optimizer step, with
:class:`NonFiniteLossError`; the checkpoints of the last good epoch stay as they are.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .distributed import DistEnv, all_reduce_sum, barrier, gather
from .loaders import seed_loader
from .precision import autocast
from .rng import capture_rng_state, restore_rng_state, seed_everything
from .run import RunDirectory

__all__ = ["FitResult", "LossFn", "MetricsFn", "NonFiniteLossError", "fit"]

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, int]]
"""``(model, batch) -> (mean loss, number of samples)``: the task moves the batch to the device,
augments it and computes the loss (under the loop's autocast)."""

MetricsFn = Callable[[nn.Module], dict[str, float]]
"""``model -> {name: value}`` on the validation data, reduced over ranks (called on every rank)."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    """One record per finished epoch: ``epoch``, ``train_loss``, ``lr``, ``train_seconds``,
    ``images_per_second``, the metrics, and the EMA's metrics as ``ema_<name>``."""
    best: dict[str, Any] | None
    epochs: int


def fit(
    model: nn.Module,
    loader: DataLoader,
    *,
    loss: LossFn,
    metrics: MetricsFn,
    score: str,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epochs: int,
    run: RunDirectory,
    env: DistEnv,
    scaler: torch.amp.GradScaler | None = None,
    ema: Any = None,
    grad_accum: int = 1,
    clip_grad: float | None = None,
    amp: str = "none",
    seed: int = 0,
    checkpoint: dict[str, Any] | None = None,
    resume: dict[str, Any] | None = None,
    resumed_from: Path | None = None,
    describe: str = "",
    progress: bool = True,
) -> FitResult:
    """Train ``model`` (on ``env.device``) for ``epochs`` epochs, or the rest of them from the
    checkpoint ``resume`` (read from ``resumed_from``).

    ``scheduler``: a timm scheduler (``step_update(num_updates=...)``, ``state_dict``); ``ema``:
    a timm ``ModelEmaV3`` or ``None``; ``score``: the metric (higher is better) that picks
    ``best.pt``; ``checkpoint``: the task's entries of every checkpoint (format, settings, ...).
    Without ``resume`` the global generators are seeded with ``seed + rank``.
    """
    scaler = scaler or torch.amp.GradScaler(env.device.type, enabled=False)
    start_epoch, num_updates, history = 0, 0, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        if ema is not None:
            ema.module.load_state_dict(resume["ema"])
        start_epoch, num_updates = resume["epoch"], resume["num_updates"]
        history = resume["history"]
        rng = resume["rng"]
        if len(rng) != env.world_size:
            raise ValueError(
                f"{resumed_from} was written by {len(rng)} process(es); resume it with as many "
                f"(got {env.world_size})"
            )
        restore_rng_state(rng[env.rank])
    else:
        seed_everything(seed + env.rank)
    best = max(history, key=lambda h: h[score]) if history else None
    run.start_log(history, best["epoch"] if best else None, resumed_from)
    if env.is_main:
        what = f"resuming {resumed_from} after epoch {start_epoch}" if resume else "training"
        print(f"{what}: {describe}, output {run.path}", file=sys.stderr)

    train_model: nn.Module = model
    if env.distributed:
        train_model = DistributedDataParallel(
            model, device_ids=[env.device] if env.device.type == "cuda" else None
        )
    for epoch in range(start_epoch, epochs):
        seed_loader(loader, seed, epoch, env.rank)
        stats, num_updates = _train_one_epoch(
            train_model,
            loader,
            loss=loss,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            ema=ema,
            grad_accum=grad_accum,
            clip_grad=clip_grad,
            amp=amp,
            env=env,
            num_updates=num_updates,
            epoch=epoch,
            epochs=epochs,
            last_good=history[-1]["epoch"] if history else None,
            run=run,
            progress=progress,
        )
        record = {"epoch": epoch + 1, **stats, **metrics(model)}
        if ema is not None:
            record.update({f"ema_{k}": v for k, v in metrics(ema.module).items()})
        history.append(record)
        is_best = best is None or record[score] > best[score]
        best = record if is_best else best
        rng_states = gather(capture_rng_state(), env)
        if env.is_main:
            state = {
                **(checkpoint or {}),
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
            run.save(state, record, is_best=is_best)
            tqdm.write(_epoch_line(record, best, score, epochs), file=sys.stderr)
        barrier(env)
    return FitResult(history=history, best=best, epochs=epochs)


def _train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    *,
    loss: LossFn,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    ema: Any,
    grad_accum: int,
    clip_grad: float | None,
    amp: str,
    env: DistEnv,
    num_updates: int,
    epoch: int,
    epochs: int,
    last_good: int | None,
    run: RunDirectory,
    progress: bool,
) -> tuple[dict[str, Any], int]:
    model.train()
    steps = len(loader)
    loss_sum, seen = torch.zeros((), dtype=torch.float64, device=env.device), 0
    group_loss = torch.zeros((), dtype=torch.float64, device=env.device)
    refresh = max(1, steps // 100)  # reading the loss syncs a GPU: only for the bar, now and then
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch + 1}/{epochs}",
        leave=False,
        disable=not (progress and env.is_main),
    )
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(loader):
        group_start = step - step % grad_accum
        micro_steps = min(grad_accum, steps - group_start)
        update = step + 1 == group_start + micro_steps
        sync = model.no_sync() if env.distributed and not update else contextlib.nullcontext()
        with sync:
            with autocast(env.device, amp):
                value, count = loss(model, batch)
            scaler.scale(value / micro_steps).backward()
        group_loss += value.detach()
        if update:
            # one reduced number per update, the same on every rank: all stop together
            (reduced,) = all_reduce_sum([group_loss.item()], env)
            if not math.isfinite(reduced):
                bar.close()
                _stop(reduced / (micro_steps * env.world_size), epoch, step, steps, last_good, run)
            group_loss.zero_()
            if clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            num_updates += 1
            scheduler.step_update(num_updates=num_updates)
            if ema is not None:
                ema.update(model.module if env.distributed else model, step=num_updates)
        loss_sum += value.detach() * count
        seen += count
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
    loss_total, seen_total = all_reduce_sum([loss_sum.item(), seen], env)
    stats = {
        "train_loss": loss_total / seen_total,
        "lr": optimizer.param_groups[0]["lr"],
        "train_seconds": seconds,
        "images_per_second": seen_total / seconds,
    }
    return stats, num_updates


def _stop(
    value: float, epoch: int, step: int, steps: int, last_good: int | None, run: RunDirectory
) -> None:
    kept = f"{run.last} keeps epoch {last_good}" if last_good else "no checkpoint was written"
    raise NonFiniteLossError(
        f"the training loss is {value} at epoch {epoch + 1}, step {step + 1}/{steps}; training "
        f"stopped before the optimizer step ({kept}); lower the learning rate or check the data"
    )


def _epoch_line(record: dict[str, Any], best: dict[str, Any], score: str, epochs: int) -> str:
    """One line per epoch: loss, learning rate, the metrics (not the EMA's), speed, the best."""
    own = ("epoch", "train_loss", "lr", "train_seconds", "images_per_second")
    shown = "".join(
        f"  {k} {v:.4g}" for k, v in record.items() if k not in own and not k.startswith("ema_")
    )
    return (
        f"epoch {record['epoch']:>3}/{epochs}  loss {record['train_loss']:.4f}  "
        f"lr {record['lr']:.2e}{shown}  "
        f"{record['images_per_second']:.0f} img/s  {record['train_seconds']:.1f}s  "
        f"(best {score} {best[score]:.4g} @ {best['epoch']})"
    )
