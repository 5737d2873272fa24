"""A tiny fit: a linear classifier on 16 random points, 4 steps per epoch, every engine part on."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.utils.data import TensorDataset

from nat.engine import DistEnv, FitResult, RunDirectory, fit, train_loader

STEPS_PER_EPOCH = 4


def run_fit(
    output: Path,
    *,
    epochs: int = 3,
    scores: list[float] | None = None,
    nan_at: int | None = None,
    env: DistEnv | None = None,
) -> tuple[nn.Module, FitResult]:
    """Fit for ``epochs``; epoch e's metric ``score`` is ``scores[e]`` (default: rising); the
    loss is NaN at global step ``nan_at`` (counting from 0)."""
    env = env or DistEnv()
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,)))
    loader = train_loader(data, 16 // STEPS_PER_EPOCH // env.world_size, env, seed=0, workers=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler, epochs = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=epochs,
        warmup_epochs=0,
        step_on_epochs=False,
        updates_per_epoch=len(loader),
    )
    steps, evaluations = itertools.count(), itertools.count()
    scores = scores or [float(e) for e in range(epochs)]

    def loss(model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        value = F.cross_entropy(model(x), y)
        if next(steps) == nan_at:
            value = value * float("nan")
        return value, len(y)

    def metrics(model: nn.Module) -> dict[str, float]:
        return {"score": scores[next(evaluations)], "val_loss": float("nan")}

    with RunDirectory(output, env) as run:
        result = fit(
            model,
            loader,
            loss=loss,
            metrics=metrics,
            score="score",
            optimizer=optimizer,
            scheduler=scheduler,
            epochs=epochs,
            run=run,
            env=env,
            checkpoint={"format": "test"},
            progress=False,
        )
    return model, result
