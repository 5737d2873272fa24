"""``nat models`` (the variants' params/GMACs table) and ``nat convert`` (checkpoint formats).

Option values are checked here, not by argparse, so that a bad one ends in one line naming it.
"""

from __future__ import annotations

import argparse

from . import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser(
        "models",
        help="list the NAT/DiNAT variants with measured params and GMACs",
        description="Parameters and GMACs of each registered variant, measured from the code "
        "(FlopCounterMode), next to the published values and ImageNet top-1.",
    )
    models.add_argument("names", nargs="*", metavar="NAME", help="variants to show (default: all)")
    models.add_argument(
        "--img-size", default=None, metavar="N", help="square input size (default: each variant's)"
    )
    models.add_argument(
        "--task",
        default="classification",
        metavar="{classification,detection,segmentation}",
        help="detection: Mask R-CNN / Cascade Mask R-CNN params and GFLOPs at 1280x800 beside "
        "the paper's (NAMEs filter the backbones); segmentation: UPerNet with each NAT backbone, "
        "params and GFLOPs at 512x2048 beside the paper's",
    )
    models.set_defaults(func=_models)

    convert = subparsers.add_parser(
        "convert",
        help="convert a checkpoint to safetensors (original or Hugging Face layout)",
        description="Read SRC in any supported format (original .pth, state_dict/model/EMA "
        "wrappers, mmdetection/mmsegmentation, Hugging Face file or directory, safetensors) and "
        "write DST: with --to original a .safetensors file with a .json config beside it; with "
        "--to hf a directory with model.safetensors and config.json.",
    )
    convert.add_argument("source", metavar="SRC", help="checkpoint file or hub directory")
    convert.add_argument("destination", metavar="DST", help="output .safetensors file or directory")
    convert.add_argument(
        "--to",
        dest="layout",
        default="original",
        metavar="{original,hf}",
        help="output layout (default: original)",
    )
    convert.add_argument(
        "--model",
        default=None,
        help="variant name (e.g. dinat_tiny); needed when SRC has no config and its shapes fit "
        "both a NAT and a DiNAT variant",
    )
    convert.set_defaults(func=_convert)


def _models(args: argparse.Namespace) -> int:
    if args.task == "detection":
        return _detection_models(args)
    if args.task == "segmentation":
        return _segmentation_models(args)
    if args.task != "classification":
        raise CLIError(
            f"--task={args.task!r} must be one of classification, detection, segmentation"
        )
    from ..models.summary import format_table, model_table

    if args.img_size is not None and not (args.img_size.isdigit() and int(args.img_size) >= 1):
        raise CLIError(f"--img-size={args.img_size!r} must be a positive integer")
    img_size = None if args.img_size is None else int(args.img_size)
    print(format_table(model_table(args.names or None, img_size)))
    return 0


def _detection_models(args: argparse.Namespace) -> int:
    from ..tasks.detection.model import PAPER
    from ..tasks.detection.summary import detection_table, format_detection_table

    if args.img_size is not None:
        raise CLIError("--img-size does not apply to --task detection (counted at 1280x800)")
    rows = [key for key in PAPER if not args.names or key[1] in args.names]
    if not rows:
        known = sorted({backbone for _, backbone in PAPER})
        raise CLIError(f"names={args.names} match no detection backbone; known: {known}")
    print(format_detection_table(detection_table(rows)))
    return 0


def _segmentation_models(args: argparse.Namespace) -> int:
    from ..tasks.segmentation.summary import format_table, segmentation_table

    if args.img_size is not None:
        raise CLIError("--img-size does not apply to --task segmentation (512x2048, the paper's)")
    print(format_table(segmentation_table(args.names or None)))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from ..models.pretrained import LAYOUTS, convert_checkpoint

    if args.layout not in LAYOUTS:
        raise CLIError(f"--to={args.layout!r} must be one of {', '.join(LAYOUTS)}")
    try:
        written = convert_checkpoint(args.source, args.destination, args.layout, args.model)
    except OSError as err:  # unreadable SRC, unwritable DST: already one line naming the path
        raise CLIError(str(err)) from None
    for path in written:
        print(path)
    return 0
