"""Data loaders for training and evaluation, with reproducible shuffling and worker seeds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .distributed import DistEnv, IterationSampler, ShardSampler, train_sampler

__all__ = ["eval_loader", "iteration_loader", "limit", "seed_loader", "train_loader"]


def limit(dataset: Dataset, count: int | None) -> Dataset:
    """The first ``count`` samples (all when ``None``)."""
    if count is None or count >= len(dataset):
        return dataset
    return Subset(dataset, range(count))


def train_loader(
    dataset: Dataset,
    batch_size: int,
    env: DistEnv,
    *,
    seed: int,
    workers: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
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
        collate_fn=collate_fn,
        drop_last=True,
        pin_memory=env.device.type == "cuda",
        generator=torch.Generator(),
        persistent_workers=False,
    )


def iteration_loader(
    dataset: Dataset,
    batch_size: int,
    env: DistEnv,
    *,
    iterations: int,
    seed: int,
    workers: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """``iterations`` batches per epoch from an endless shuffled stream over ``dataset`` (see
    :class:`IterationSampler`; call :func:`seed_loader` first): for training counted in
    iterations rather than passes over the data."""
    if len(dataset) == 0:
        raise ValueError("the training set is empty")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=IterationSampler(len(dataset), iterations, batch_size, env, seed),
        num_workers=workers,
        collate_fn=collate_fn,
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


def eval_loader(
    dataset: Dataset,
    batch_size: int,
    env: DistEnv,
    *,
    workers: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """In order, each rank a disjoint shard; its own generator so it never touches global RNG."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), env),
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=env.device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
