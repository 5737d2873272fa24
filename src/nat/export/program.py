"""``torch.export`` of models built on neighborhood attention, and saving/loading the programs.

The exported graph keeps every neighborhood attention call as one ``nat::na_forward`` node (the
registered operator), so the program runs with the same kernels as eager mode and can be lowered
further (to ONNX by :mod:`nat.export.onnx_file`). Programs are traced without autograd: the op
is recorded without its log-sum-exp, the inference form.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..files import PathLike, atomic_open
from ..ops.dispatch import resolve_backend, use_backend

__all__ = ["export_program", "load_program", "na_nodes", "save_program"]


def _check_example(example: torch.Tensor, dynamic_batch: bool) -> None:
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"example must be a torch.Tensor, got {type(example).__name__}")
    if example.dim() < 1 or example.shape[0] < 1:
        raise ValueError(f"example has shape {tuple(example.shape)}; expected a batch axis first")
    if dynamic_batch and example.shape[0] < 2:
        # torch.export specialises axes of size 1: a batch of one would be fixed at one.
        raise ValueError(
            f"example has batch size {example.shape[0]}; a dynamic batch needs an example "
            f"batch of at least 2"
        )


def export_program(
    model: nn.Module,
    example: torch.Tensor,
    dynamic_batch: bool = True,
    backend: str | None = None,
    dynamic_axes: Mapping[int, tuple[int, int | None]] | None = None,
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` (in eval mode) on one input like ``example``.

    ``example`` is ``[B, ...]`` (``[B, C, H, W]`` for the NAT/DiNAT models); with
    ``dynamic_batch`` the program accepts any batch size, every other axis stays as in
    ``example``. An input the model cannot take (a window larger than a feature map that the
    model does not pad) fails here with the operator's error, before any file is written.

    Each NA node records the backend it calls: ``backend``, or (``None``) the one eager mode
    would use for ``example``'s device. ``"torch"`` makes a program that runs on any device and
    machine; the default ``cpu`` kernel is faster but needs the kernel built where it runs.

    ``dynamic_axes`` makes more axes free: ``{axis: (min, max)}`` (``max`` ``None``: unbounded),
    e.g. height and width from :func:`nat.export.min_dynamic_size` up. The NA op builds its
    neighbour table for each input it is given, so the program stays exact at every size.
    """
    _check_example(example, dynamic_batch)
    backend = resolve_backend(backend, example.device)
    if backend == "reference":
        raise ValueError(
            "backend='reference' computes outside the registered op; an exported program "
            "needs a registered backend"
        )
    axes = {0: torch.export.Dim("batch", min=1)} if dynamic_batch else {}
    for axis, (low, high) in (dynamic_axes or {}).items():
        size = example.shape[axis] if 0 < axis < example.dim() else None
        if size is None or size < low or (high is not None and size > high):
            raise ValueError(
                f"dynamic_axes={dict(dynamic_axes)!r}: axis {axis} of an example of shape "
                f"{tuple(example.shape)} must exist, not be the batch, and lie in its range"
            )
        axes[axis] = torch.export.Dim(f"axis{axis}", min=low, max=high)
    shapes = (axes,) if axes else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), use_backend(backend):
            return torch.export.export(model, (example,), dynamic_shapes=shapes)
    except ValueError as err:
        raise ValueError(
            f"cannot export {type(model).__name__} for an input of shape "
            f"{tuple(example.shape)}: {err}"
        ) from err
    finally:
        model.train(was_training)


def na_nodes(program: torch.export.ExportedProgram) -> list[torch.fx.Node]:
    """The ``nat::na_forward`` calls of an exported program, in graph order."""
    return [n for n in program.graph.nodes if n.target is torch.ops.nat.na_forward.default]


def save_program(program: torch.export.ExportedProgram, path: PathLike) -> Path:
    """``torch.export.save`` to ``path`` atomically (conventionally a ``.pt2`` file)."""
    with atomic_open(path, "wb") as f:
        torch.export.save(program, f)
    return Path(path)


def load_program(path: PathLike) -> torch.export.ExportedProgram:
    """A program written by :func:`save_program` (importing :mod:`nat` registers its op)."""
    # A file object, so that any file name is accepted (a path must end in .pt2).
    with open(path, "rb") as f:
        return torch.export.load(f)
