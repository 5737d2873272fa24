"""DistributedDataParallel plumbing under ``torchrun``: process group, samplers, reductions.

Single-process runs use the same code paths with a world of one, so a run under ``torchrun`` with
N processes and batch B matches one process with batch N*B (same sample order, averaged grads).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

__all__ = [
    "DistEnv",
    "IterationSampler",
    "ShardSampler",
    "all_reduce_sum",
    "barrier",
    "broadcast",
    "gather",
    "init_distributed",
    "train_sampler",
]


_CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = _CPU

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistEnv:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``):
    NCCL on CUDA, gloo on CPU. Without those variables: one process on ``device`` (default: CUDA
    when available)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        # Left to interpreter exit, the process group's teardown races its own threads: gloo
        # then aborts the process ("terminate called without an active exception").
        atexit.register(_destroy_process_group)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Element-wise sum over ranks (float64, so counts stay exact)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(env))
    dist.all_reduce(t)
    return t.tolist()


def gather(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _comm_device(env: DistEnv) -> torch.device:
    return env.device if dist.get_backend() == "nccl" else torch.device("cpu")


def train_sampler(length: int, env: DistEnv, seed: int) -> DistributedSampler:
    """Shuffled per epoch (``set_epoch``) from ``seed``; rank r takes every world-th index."""
    return DistributedSampler(
        range(length), num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed
    )


class ShardSampler(Sampler[int]):
    """Evaluation order without padding: rank r takes indices r, r+world, ... so every sample is
    counted exactly once when the per-rank sums are reduced."""

    def __init__(self, length: int, env: DistEnv) -> None:
        self.indices = range(env.rank, length, env.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class IterationSampler(Sampler[int]):
    """For training counted in iterations: an endless sequence of shuffled passes over the data
    (pass p a permutation drawn from ``(seed, p)``), cut into epochs of ``iterations`` global
    batches of ``batch_size`` per rank; rank r takes every world-th index. Epoch e's indices
    depend only on ``(seed, e)``, so a resumed run continues the sequence exactly."""

    def __init__(
        self, length: int, iterations: int, batch_size: int, env: DistEnv, seed: int
    ) -> None:
        self.length, self.seed, self.env = length, seed, env
        self.global_count = iterations * batch_size * env.world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.global_count
        first, last = start // self.length, (start + self.global_count - 1) // self.length
        order = torch.cat([self._permutation(p) for p in range(first, last + 1)])
        offset = start - first * self.length
        mine = order[offset : offset + self.global_count][self.env.rank :: self.env.world_size]
        return iter(mine.tolist())

    def _permutation(self, pass_index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index)
        return torch.randperm(self.length, generator=generator)

    def __len__(self) -> int:
        return self.global_count // self.env.world_size
