"""Export an image model to a file and check the file against the model: ``nat export``.

:func:`export_model` writes an ONNX file or a ``torch.export`` program, then runs the file (in
onnxruntime, or the reloaded program) on random inputs and reports its largest difference from
the model in eager mode, so a broken export is seen when it is made, not when it is served.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..files import PathLike
from ..models import NATTrunk
from .onnx_file import export_onnx, onnx_session, run_onnx
from .program import export_program, load_program, save_program

__all__ = [
    "FORMATS",
    "TOLERANCE",
    "ExportResult",
    "export_model",
    "image_input",
    "largest_difference",
    "min_dynamic_size",
]

FORMATS = ("onnx", "exported-program")
TOLERANCE = 1e-4
"""The largest relative difference from eager mode (float32) a good export shows."""

_EXAMPLE_BATCH = 2
_CHECK_BATCHES = (1, 3)
"""Batch sizes a dynamic-batch file is checked at: neither is the example's."""


@dataclass(frozen=True)
class ExportResult:
    """A written file and how closely it reproduces the model."""

    path: Path
    format: str
    input_shape: tuple[int, ...]
    """The example input's shape; with ``dynamic_batch`` its batch axis is free."""
    dynamic_batch: bool
    min_size: tuple[int, int] | None
    """The smallest ``(H, W)`` of a dynamic-size program (``None``: the example's size only)."""
    checked_sizes: tuple[tuple[int, int], ...]
    """``(H, W)`` the file was checked at: the example's, and :attr:`min_size`."""
    opset: int | None
    """The ONNX file's opset (``None`` for an exported program)."""
    checked_batches: tuple[int, ...]
    max_abs_diff: float
    """Largest ``|file - eager|`` over every output element of every checked batch."""
    max_rel_diff: float
    """:attr:`max_abs_diff` over the largest ``|eager|`` output element."""

    @property
    def ok(self) -> bool:
        """Whether the file reproduces the model within :data:`TOLERANCE`."""
        return self.max_rel_diff <= TOLERANCE


def image_input(
    model: nn.Module,
    input_size: Sequence[int] | None = None,
    batch: int = _EXAMPLE_BATCH,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random ``[batch, C, H, W]`` input for an image model.

    ``C`` (and ``H, W`` unless ``input_size`` gives them) come from the model's timm
    ``pretrained_cfg``; a NAT trunk built directly (no config) takes ``C`` from its stem and
    needs ``input_size``.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        chans, height, width = cfg["input_size"]
    elif isinstance(model, NATTrunk):
        chans, height, width = model.patch_embed.proj[0].in_channels, None, None
    else:
        raise ValueError(
            f"{type(model).__name__} has no pretrained_cfg['input_size']; cannot tell its input "
            f"channels"
        )
    if input_size is not None:
        if len(input_size) != 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in input_size
        ):
            raise ValueError(f"input_size={input_size!r} must be two integers >= 1 (height, width)")
        height, width = input_size
    if height is None:
        raise ValueError(
            f"input_size=None: {type(model).__name__} has no default input size; give (height, "
            f"width)"
        )
    return torch.randn((batch, chans, height, width), generator=generator)


def min_dynamic_size(model: NATTrunk) -> tuple[int, int]:
    """The smallest ``(H, W)`` from which a NAT trunk's height and width can be left free.

    Level ``i`` sees ``ceil(H / 2**(i + 2))`` rows; from this size on every level's map is at
    least its largest ``kernel_size * dilation``, so no block pads and the traced program holds
    for every larger size.
    """
    if not isinstance(model, NATTrunk):
        raise ValueError(
            f"a dynamic input size is worked out for NAT/DiNAT models, not {type(model).__name__}"
        )
    size = [1, 1]
    for i, level in enumerate(model.levels):
        for block in level.blocks:
            attn = block.attn
            for axis, (k, d) in enumerate(zip(attn.kernel_size, attn.dilation, strict=True)):
                size[axis] = max(size[axis], 2 ** (i + 2) * (k * d - 1) + 1)
    return size[0], size[1]


def _flat_outputs(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _flat_outputs(item)]


def largest_difference(
    outputs: Sequence[torch.Tensor], references: Sequence[torch.Tensor]
) -> tuple[float, float]:
    """``(max |out - ref|, max |out - ref| / max |ref|)`` over matching output lists."""
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs for {len(references)} reference outputs")
    diff, scale = 0.0, 0.0
    for out, ref in zip(outputs, references, strict=True):
        if tuple(out.shape) != tuple(ref.shape):
            raise ValueError(f"an output has shape {tuple(out.shape)}; expected {tuple(ref.shape)}")
        diff = max(diff, (out.double() - ref.double()).abs().max().item())
        scale = max(scale, ref.double().abs().max().item())
    return diff, diff / scale if scale > 0 else diff


def export_model(
    model: nn.Module,
    output: PathLike,
    format: str = "onnx",
    input_size: Sequence[int] | None = None,
    batch: int | str = 1,
    opset: int | None = None,
    backend: str | None = None,
    dynamic_size: bool = False,
    seed: int = 0,
) -> ExportResult:
    """Export ``model`` (eval mode, CPU) to ``output`` and check the written file.

    ``format``: ``"onnx"`` (standard operators only; runs in onnxruntime) or
    ``"exported-program"`` (``torch.export.save``; the NA op stays one node). ``input_size``:
    ``(H, W)``, default the model's configured size. ``batch``: a fixed batch size, or
    ``"dynamic"``: the file then takes any batch size and is checked at two that differ from the
    example's. ``backend``: the NA backend an exported program calls (see
    :func:`nat.export.export_program`); an ONNX file does not depend on it. ``dynamic_size``:
    an exported program of a NAT/DiNAT model takes any height and width from
    :func:`min_dynamic_size` up (checked there too); ONNX files are built for one size.
    """
    dynamic_batch = batch == "dynamic"
    if not dynamic_batch and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch={batch!r} must be an integer >= 1 or 'dynamic'")
    if format not in FORMATS:
        raise ValueError(f"format={format!r} must be one of {', '.join(FORMATS)}")
    if format != "onnx" and opset is not None:
        raise ValueError(f"opset={opset} only applies to format='onnx', not {format!r}")
    if dynamic_size and format == "onnx":
        raise ValueError(
            "dynamic_size=True needs format='exported-program': an ONNX file holds the "
            "neighbour tables of one input size"
        )
    model = model.eval()
    generator = torch.Generator().manual_seed(seed)
    example_batch = _EXAMPLE_BATCH if dynamic_batch else batch
    example = image_input(model, input_size, example_batch, generator)
    sizes = [tuple(example.shape[-2:])]
    dynamic_axes, low = None, None
    if dynamic_size:
        low = min_dynamic_size(model)
        if example.shape[-2] < low[0] or example.shape[-1] < low[1]:
            raise ValueError(
                f"input_size={tuple(example.shape[-2:])} is below {low}, the smallest size a "
                f"dynamic-size export of this model takes"
            )
        dynamic_axes = {2: (low[0], None), 3: (low[1], None)}
        sizes.append(low)
    program = export_program(model, example, dynamic_batch, backend, dynamic_axes)
    run: Callable[[torch.Tensor], list[torch.Tensor]]
    if format == "onnx":
        path = export_onnx(program, example, output, opset=opset)
        opset = _file_opset(path)
        session = onnx_session(path)

        def run(x: torch.Tensor) -> list[torch.Tensor]:
            return [torch.from_numpy(o) for o in run_onnx(session, [x.numpy()])]
    else:
        path = save_program(program, output)
        loaded = load_program(path).module()

        def run(x: torch.Tensor) -> list[torch.Tensor]:
            return _flat_outputs(loaded(x))

    batches = _CHECK_BATCHES if dynamic_batch else (example_batch,)
    worst_abs, worst_rel = 0.0, 0.0
    for batch in batches:
        for size in sizes:
            x = image_input(model, size, batch, generator)
            with torch.no_grad():
                reference = _flat_outputs(model(x))
                diff, rel = largest_difference(run(x), reference)
            worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, rel)
    return ExportResult(
        path,
        format,
        tuple(example.shape),
        dynamic_batch,
        low,
        tuple(sizes),
        opset,
        batches,
        worst_abs,
        worst_rel,
    )


def _file_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
