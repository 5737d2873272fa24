"""Data configs and loaders for training and evaluation, with reproducible shuffling and workers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.data import resolve_data_config
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ...data import drop_skipped
from .distributed import DistEnv, ShardSampler, train_sampler

__all__ = ["data_config_for", "eval_loader", "limit", "seed_loader", "train_loader"]


def data_config_for(
    model: nn.Module,
    *,
    input_size: int | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, Any]:
    """timm's data config of ``model`` (its pretrained cfg) with the given overrides, as plain
    data (lists, not tuples) so it can be stored in a checkpoint."""
    overrides: dict[str, Any] = {
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "mean": tuple(mean) if mean else None,
        "std": tuple(std) if std else None,
    }
    if input_size:
        overrides["input_size"] = (3, input_size, input_size)
    cfg = resolve_data_config({k: v for k, v in overrides.items() if v is not None}, model=model)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def limit(dataset: Dataset, count: int | None) -> Dataset:
    """The first ``count`` samples (all when ``None``)."""
    if count is None or count >= len(dataset):
        return dataset
    return Subset(dataset, range(count))


def train_loader(
    dataset: Dataset, batch_size: int, env: DistEnv, *, seed: int, workers: int
) -> DataLoader:
    """Shuffled per epoch (call :func:`seed_loader` first), last partial batch dropped."""
    if len(dataset) < batch_size * env.world_size:
        raise ValueError(
            f"the training set has {len(dataset)} images, fewer than one global batch "
            f"({batch_size} x {env.world_size} processes)"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=train_sampler(len(dataset), env, seed),
        num_workers=workers,
        drop_last=True,
        pin_memory=env.device.type == "cuda",
        generator=torch.Generator(),
        persistent_workers=False,
    )


def seed_loader(loader: DataLoader, seed: int, epoch: int, rank: int) -> None:
    """Fix epoch ``epoch``'s shuffle and the worker seeds, independently of what ran before."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed((seed * 1_000_003 + epoch) * 1_009 + rank)


def eval_loader(dataset: Dataset, batch_size: int, env: DistEnv, *, workers: int) -> DataLoader:
    """In order, each rank a disjoint shard; its own generator so it never touches global RNG.
    Skipped unreadable images (``None`` samples) are left out of their batch."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=drop_skipped,
        sampler=ShardSampler(len(dataset), env),
        num_workers=workers,
        pin_memory=env.device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
