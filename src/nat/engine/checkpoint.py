"""Training checkpoints: atomic writes, safe loading, and the check that a resume changes nothing.

A checkpoint is a dict of tensors and plain data, so it loads with ``torch.load(weights_only=True)``
(no code is unpickled). Files are written through :mod:`nat.files` (temporary file, fsync, rename),
so a kill at any moment leaves the previous good checkpoint in place.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..files import CheckpointError, atomic_save, read_tensors

__all__ = ["CheckpointError", "load_checkpoint", "resumed_settings", "save_checkpoint"]


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename, fsync directory)."""
    return atomic_save(state, path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with ``weights_only=True``; a missing, truncated or corrupt
    file raises one clear error (:class:`FileNotFoundError` / :class:`CheckpointError`)."""
    state = read_tensors(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold a dict")
    return state


def resumed_settings(
    state: dict[str, Any],
    requested: dict[str, Any],
    *,
    format: str,
    runtime: Collection[str],
    path: str | os.PathLike[str],
) -> dict[str, Any]:
    """The settings a run resumed from checkpoint ``state`` continues with: the saved ones, except
    the ``runtime`` settings (output, workers, ...), which do not change the model, data or recipe
    and are taken from ``requested``. Any other requested setting that differs from the saved one
    is an error, and so is a checkpoint that is not of ``format``."""
    if state.get("format") != format:
        raise CheckpointError(f"{path} is not a {format} checkpoint; cannot resume")
    saved = state["config"]
    changed = [
        f"{k}: {v!r} -> {requested[k]!r}"
        for k, v in saved.items()
        if k not in runtime and k in requested and v != requested[k]
    ]
    if changed:
        raise ValueError(
            f"cannot resume {path} with different settings ({'; '.join(changed)}); "
            "use another output directory"
        )
    return {**saved, **{k: requested[k] for k in runtime if k in requested}}
