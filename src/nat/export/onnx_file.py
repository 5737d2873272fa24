"""ONNX files of models built on neighborhood attention, and running them in onnxruntime.

A model goes through :func:`nat.export.program.export_program` (so the batch can stay dynamic and
a bad input size fails early), then through PyTorch's ONNX exporter with the NA op translated to
standard operators (:mod:`nat.export.na_onnx`): the file needs no custom op or plugin.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..files import PathLike, atomic_write
from .na_onnx import translation_table
from .program import export_program

__all__ = ["MIN_OPSET", "export_onnx", "onnx_program", "onnx_session", "run_onnx"]

MIN_OPSET = 18
"""The oldest opset PyTorch's ONNX exporter (``dynamo=True``) writes."""


def _check_opset(opset: int | None) -> None:
    if opset is None:
        return
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset={opset!r} must be an integer >= {MIN_OPSET}")


def onnx_program(
    model: nn.Module | torch.export.ExportedProgram,
    example: torch.Tensor,
    dynamic_batch: bool = True,
    opset: int | None = None,
) -> torch.onnx.ONNXProgram:
    """The ONNX program of ``model`` for inputs like ``example`` (``[B, ...]``).

    ``model`` may already be an exported program. ``opset``: the ONNX opset (``None``: the
    exporter's default).
    """
    _check_opset(opset)
    program = (
        model
        if isinstance(model, torch.export.ExportedProgram)
        else export_program(model, example, dynamic_batch)
    )
    try:
        # The exporter reports its progress on stdout; a library call stays quiet.
        with contextlib.redirect_stdout(io.StringIO()):
            return torch.onnx.export(
                program,
                (example,),
                dynamo=True,
                custom_translation_table=translation_table(),
                opset_version=opset,
                input_names=["input"],
                verbose=False,
            )
    except torch.onnx.OnnxExporterError as err:
        reason = _value_error_in(err)
        if reason is None:
            raise
        raise ValueError(f"cannot export to ONNX: {reason}") from err


def _value_error_in(err: BaseException) -> ValueError | None:
    """The argument error (ours, e.g. from :mod:`nat.export.na_onnx`) an exporter error wraps."""
    while err is not None:
        if isinstance(err, ValueError):
            return err
        err = err.__cause__ or err.__context__
    return None


def export_onnx(
    model: nn.Module | torch.export.ExportedProgram,
    example: torch.Tensor,
    path: PathLike,
    dynamic_batch: bool = True,
    opset: int | None = None,
) -> Path:
    """Write ``model``'s ONNX file (weights inside) to ``path`` atomically.

    The arguments are :func:`onnx_program`'s.
    """
    proto = onnx_program(model, example, dynamic_batch, opset).model_proto
    return atomic_write(path, proto.SerializeToString())


def onnx_session(path: PathLike):
    """An onnxruntime CPU session of an ONNX file, for :func:`run_onnx` calls in a row."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(source, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Outputs of an ONNX file (a path, or an :func:`onnx_session`) in onnxruntime on the CPU.

    ``inputs`` come in the file's input order.
    """
    session = source if hasattr(source, "get_inputs") else onnx_session(source)
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"the ONNX file takes {len(names)} inputs ({names}); got {len(inputs)}")
    return session.run(None, dict(zip(names, inputs, strict=True)))
