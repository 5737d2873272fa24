"""``nat export``: a model as an ONNX file (standard operators) or a ``torch.export`` program.

The export checks itself (see :func:`nat.export.export_model`): the command prints the largest
difference between the written file and the model, and exits with status 1 when it is larger
than :data:`nat.export.TOLERANCE`.
"""

from __future__ import annotations

import argparse
import sys

from . import CLIError, positive_int

__all__ = ["register"]

_FORMATS = ("onnx", "exported-program")


def _batch(text: str) -> int | str:
    if text == "dynamic":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'dynamic' or an integer >= 1") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model to ONNX (runs in onnxruntime, no custom op) or a torch.export program",
        description="Export MODEL (a registered variant; weights from --checkpoint, else random) "
        "and check the written file: it is run (ONNX in onnxruntime, a program reloaded) on "
        "random inputs and its largest difference from the model in PyTorch is printed. "
        "Neighborhood attention becomes standard ONNX operators, built for the exported input "
        "size.",
    )
    p.add_argument("model", metavar="MODEL", help="registered model name, e.g. nat_tiny")
    p.add_argument("--checkpoint", default=None, metavar="PATH", help="weights to export")
    p.add_argument(
        "--format", required=True, choices=_FORMATS, help="onnx or exported-program (.pt2)"
    )
    p.add_argument("--output", required=True, metavar="FILE", help="file to write")
    p.add_argument(
        "--batch",
        type=_batch,
        default=1,
        metavar="{dynamic,N}",
        help="'dynamic' (any batch size) or a fixed batch size (default: 1)",
    )
    p.add_argument(
        "--input-size",
        nargs=2,
        type=positive_int,
        default=None,
        metavar=("H", "W"),
        help="input height and width (default: the model's)",
    )
    p.add_argument(
        "--opset", type=positive_int, default=None, help="ONNX opset (default: the exporter's)"
    )
    p.add_argument(
        "--dynamic-size",
        action="store_true",
        help="exported-program only: any height and width from the model's smallest on",
    )
    p.add_argument(
        "--backend",
        default=None,
        help="NA backend an exported program calls (default: the best here; 'torch' runs on "
        "any device and machine)",
    )
    p.set_defaults(func=_export)


def _load(name: str, checkpoint: str | None):
    import timm

    from ..models import load_model

    if checkpoint is not None:
        return load_model(checkpoint, model=name)
    if not timm.is_model(name):
        raise CLIError(f"MODEL={name!r} is not a registered model (see nat models)")
    return timm.create_model(name, pretrained=False)


def _export(args: argparse.Namespace) -> int:
    from ..export import MIN_OPSET, TOLERANCE, export_model

    if args.opset is not None and args.format != "onnx":
        raise CLIError(f"--opset={args.opset} only applies to --format onnx")
    if args.opset is not None and args.opset < MIN_OPSET:
        raise CLIError(f"--opset={args.opset} must be >= {MIN_OPSET}")
    if args.dynamic_size and args.format != "exported-program":
        raise CLIError("--dynamic-size only applies to --format exported-program")
    model = _load(args.model, args.checkpoint)
    result = export_model(
        model,
        args.output,
        args.format,
        input_size=args.input_size,
        batch=args.batch,
        opset=args.opset,
        backend=args.backend,
        dynamic_size=args.dynamic_size,
    )
    shape = ["batch" if result.dynamic_batch else str(result.input_shape[0])]
    shape += [str(s) for s in result.input_shape[1:]]
    if result.min_size is not None:
        shape[-2:] = [f"H>={result.min_size[0]}", f"W>={result.min_size[1]}"]
    opset = "" if result.opset is None else f", opset {result.opset}"
    print(f"wrote {result.path} ({result.format}, input [{', '.join(shape)}]{opset})")
    runner = "onnxruntime" if result.format == "onnx" else "the reloaded program"
    batches = ", ".join(map(str, result.checked_batches))
    sizes = ", ".join(f"{h}x{w}" for h, w in result.checked_sizes)
    print(
        f"checked in {runner} at batch {batches}, size {sizes}: largest difference "
        f"{result.max_abs_diff:.3g} (relative {result.max_rel_diff:.3g})"
    )
    if not result.ok:
        print(
            f"nat export: error: the relative difference {result.max_rel_diff:.3g} is larger "
            f"than {TOLERANCE:g}",
            file=sys.stderr,
        )
        return 1
    return 0
