"""What every task shares: the distributed environment, loaders, precision, optimizer options,
checkpoints, the run directory and the fit loop. Tasks (``nat.tasks.*``) add a model, data, a
loss and metrics."""

from .checkpoint import CheckpointError, load_checkpoint, resumed_settings, save_checkpoint
from .distributed import (
    DistEnv,
    IterationSampler,
    ShardSampler,
    all_reduce_sum,
    barrier,
    broadcast,
    gather,
    init_distributed,
    train_sampler,
)
from .fit import FitResult, LossFn, MetricsFn, NonFiniteLossError, fit
from .loaders import eval_loader, iteration_loader, limit, seed_loader, train_loader
from .optim import fused_kwargs
from .precision import AMP_MODES, autocast, resolve_amp
from .rng import capture_rng_state, restore_rng_state, seed_everything
from .run import RunDirectory, RunLockedError, default_output, train_in_run_directory

__all__ = [
    "AMP_MODES",
    "CheckpointError",
    "DistEnv",
    "FitResult",
    "IterationSampler",
    "LossFn",
    "MetricsFn",
    "NonFiniteLossError",
    "RunDirectory",
    "RunLockedError",
    "ShardSampler",
    "all_reduce_sum",
    "autocast",
    "barrier",
    "broadcast",
    "capture_rng_state",
    "default_output",
    "eval_loader",
    "fit",
    "fused_kwargs",
    "gather",
    "init_distributed",
    "iteration_loader",
    "limit",
    "load_checkpoint",
    "resolve_amp",
    "restore_rng_state",
    "resumed_settings",
    "save_checkpoint",
    "seed_everything",
    "seed_loader",
    "train_in_run_directory",
    "train_loader",
    "train_sampler",
]
