"""``nat segment train | eval | predict``: semantic segmentation with UPerNet."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..files import write_json
from . import (
    add_overrides,
    add_run_arguments,
    collect_overrides,
    non_negative_int,
    positive_int,
    saved_config,
)

__all__ = ["register"]

_TRAIN_OVERRIDES = (
    ("--backbone", str, "timm backbone (nat_mini, nat_tiny, dinat_small, ...)"),
    ("--data", str, "ADE20K root (ADEChallengeData2016) or mask folder; default: synthetic"),
    ("--output", str, "output directory (default runs/<time>-upernet-<backbone>); resumes"),
    ("--iterations", int, "optimizer updates in all"),
    ("--eval-interval", int, "iterations between evaluations and checkpoints"),
    ("--batch-size", int, "images per process and iteration"),
    ("--lr", float, "peak learning rate"),
    ("--workers", int, "data loader worker processes per process"),
    ("--threads", int, "CPU threads for intra-op parallelism"),
    ("--seed", int, "random seed"),
    ("--amp", str, "mixed precision: auto, none, bf16, fp16"),
    ("--device", str, "cpu, cuda, cuda:1 (default: cuda if available)"),
    ("--initial-checkpoint", str, "UPerNet weights to start from (ours or mmsegmentation's)"),
    ("--max-train-samples", int, "train on the first N images only"),
    ("--max-val-samples", int, "evaluate on the first N images only"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    segment = subparsers.add_parser(
        "segment",
        help="semantic segmentation: UPerNet with NAT backbones",
        description="Train, evaluate and apply UPerNet segmentation models.",
    )
    commands = segment.add_subparsers(dest="segment_command", metavar="COMMAND", required=True)
    _register_train(commands)
    _register_eval(commands)
    _register_predict(commands)


def _register_train(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train UPerNet (default: a small model on generated scenes)",
        description="Train UPerNet. With no data: a small UPerNet-NAT on generated scenes (the "
        "'synthetic' recipe). Recipes upernet_nat_{mini,tiny,small,base} are the paper's "
        "(torchrun --nproc_per_node 8 -m nat segment train --config upernet_nat_tiny --data ...).",
    )
    p.add_argument(
        "--config",
        default=None,
        help="named recipe or YAML file; default: synthetic without --data, else the paper's "
        "settings (nat.tasks.segmentation.SegmentConfig)",
    )
    add_overrides(p, _TRAIN_OVERRIDES)
    p.add_argument("--pretrained", action="store_true", default=None, help="timm backbone weights")
    add_run_arguments(p, "crop_size=256")
    p.set_defaults(func=_train)


def _register_eval(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "eval",
        help="mIoU, mAcc, aAcc and per-class IoU of a checkpoint",
        description="Evaluate a checkpoint (ours, or mmsegmentation's with --backbone and "
        "--data) single-scale, or multi-scale (0.5-1.75) with --multi-scale --flip.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--data", default=None, help="data root (default: the checkpoint's data)")
    p.add_argument("--split", default="val", choices=("train", "val"))
    p.add_argument("--backbone", default=None, help="backbone of an mmsegmentation checkpoint")
    p.add_argument("--multi-scale", action="store_true", help="ratios 0.5, 0.75, ..., 1.75")
    p.add_argument("--flip", action="store_true", help="also the mirrored images")
    p.add_argument("--mode", default=None, choices=("whole", "slide"), help="whole or windows")
    p.add_argument(
        "--scale", type=positive_int, nargs=2, default=None, metavar=("LONG", "SHORT"),
        help="fit images into LONG x SHORT (default: the trained scale; ADE20K 2048 512)",
    )  # fmt: skip
    p.add_argument("--max-samples", type=positive_int, default=None)
    p.add_argument("--workers", type=non_negative_int, default=2)
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=_eval)


def _register_predict(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("predict", help="colour overlays with a legend for images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", required=True, help="a training or mmsegmentation checkpoint")
    p.add_argument("--out", default="predictions", help="output folder (default predictions)")
    p.add_argument("--backbone", default=None, help="backbone of an mmsegmentation checkpoint")
    p.add_argument("--data", default=None, help="data root whose class list names the classes")
    p.add_argument("--multi-scale", action="store_true")
    p.add_argument("--flip", action="store_true")
    p.add_argument("--mode", default=None, choices=("whole", "slide"))
    p.add_argument("--scale", type=positive_int, nargs=2, default=None, metavar=("LONG", "SHORT"))
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=_predict)


def _train(args: argparse.Namespace) -> int:
    from ..tasks.segmentation import SegmentConfig, load_config
    from ..tasks.segmentation.train import train

    overrides = collect_overrides(args, _TRAIN_OVERRIDES, pretrained=args.pretrained)
    if args.resume and args.config is None:
        config = SegmentConfig.from_dict(saved_config(args.resume))
    elif args.config is None and overrides.get("data") is not None:
        config = SegmentConfig()  # the paper's settings (UPerNet-NAT-Tiny, 160k iterations)
    else:
        config = load_config(args.config or "synthetic")
    result = train(config.replace(**overrides), resume=args.resume, progress=not args.no_progress)
    if not result.is_main:
        return 0
    if args.json:
        print(json.dumps(result.summary, indent=2))
    else:
        _print_table([(k, _fmt(v)) for k, v in result.summary.items()], ("summary", ""))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..tasks.segmentation.evaluate import evaluate

    result = evaluate(
        args.checkpoint,
        data=args.data,
        split=args.split,
        backbone=args.backbone,
        multi_scale=args.multi_scale,
        flip=args.flip,
        mode=args.mode,
        scale=args.scale,
        max_samples=args.max_samples,
        workers=args.workers,
        amp=args.amp,
        device=args.device,
        progress=not args.no_progress,
    )
    rows = [(c["class"], _fmt(c["iou"]), _fmt(c["acc"])) for c in result["per_class"]]
    _print_table(rows, ("class", "IoU", "Acc"))
    print()
    _print_table(
        [(k, _fmt(result[k])) for k in ("miou", "macc", "aacc", "images", "data", "split")],
        ("metric", ""),
    )
    if args.json:
        write_json(args.json, result)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..tasks.segmentation.predict import predict

    results = predict(
        args.images,
        args.checkpoint,
        args.out,
        backbone=args.backbone,
        data=args.data,
        multi_scale=args.multi_scale,
        flip=args.flip,
        mode=args.mode,
        scale=args.scale,
        device=args.device,
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    rows = [
        (r["image"], r["overlay"], ", ".join(f"{k} {v:.0%}" for k, v in r["classes"].items()))
        for r in results
    ]
    _print_table(rows, ("image", "overlay", "classes"))
    return 0


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
