"""``nat detect train | eval | predict``: Mask R-CNN and Cascade Mask R-CNN on COCO-format data."""

from __future__ import annotations

import argparse
import json
from typing import Any

from . import (
    Parser,
    add_overrides,
    add_run_arguments,
    collect_overrides,
    fraction,
    positive_int,
    saved_config,
)

__all__ = ["register"]

# Flags that override a config setting; unset ones (None) keep the recipe's value.
_TRAIN_OVERRIDES = (
    ("--architecture", str, "mask_rcnn or cascade_mask_rcnn"),
    ("--backbone", str, "NAT/DiNAT variant or timm model (features of strides 4-32)"),
    ("--data", str, "COCO-layout root (train2017/, val2017/, annotations/); default: shapes"),
    ("--output", str, "output directory (default runs/<time>-<architecture>); resumes from it"),
    ("--epochs", int, "epochs"),
    ("--batch-size", int, "images per process"),
    ("--lr", float, "learning rate per lr_batch_size images"),
    ("--num-classes", int, "classes including the background (default: categories + 1)"),
    ("--initial-checkpoint", str, "weights to start from (backbone, detector or mmdetection)"),
    ("--max-train-samples", int, "train on the first N images only"),
    ("--max-val-samples", int, "evaluate on the first N images only"),
    ("--workers", int, "data loader worker processes per process"),
    ("--threads", int, "CPU threads for intra-op parallelism"),
    ("--seed", int, "random seed"),
    ("--amp", str, "mixed precision: auto, none, bf16, fp16"),
    ("--device", str, "cpu, cuda, cuda:1 (default: cuda if available)"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    detect = subparsers.add_parser(
        "detect",
        help="object detection and instance segmentation (Mask R-CNN, Cascade Mask R-CNN)",
        description="Train, evaluate and run Mask R-CNN / Cascade Mask R-CNN with NAT backbones "
        "on COCO-format data. With no data: a synthetic shapes dataset made on the spot.",
    )
    actions = detect.add_subparsers(
        dest="action", metavar="ACTION", required=True, parser_class=Parser
    )
    _register_train(actions)
    _register_eval(actions)
    _register_predict(actions)


def _register_train(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "train",
        help="train a detector (default: the synthetic shapes demo)",
        description="Train a detector. With no arguments: the 'shapes' recipe (a small NAT Mask "
        "R-CNN on generated shapes, minutes on a CPU); --config coco_3x is the paper's schedule. "
        "Under torchrun (torchrun --nproc_per_node 8 -m nat detect train ...) it runs DDP.",
    )
    p.add_argument("--config", default=None, help="named recipe (shapes, coco_3x) or YAML file")
    add_overrides(p, _TRAIN_OVERRIDES)
    add_run_arguments(p, "milestones=[8,11]")
    p.set_defaults(func=_train)


def _register_eval(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "eval",
        help="COCO box and mask AP of a checkpoint",
        description="Evaluate a checkpoint with pycocotools (AP, AP50, AP75, small/medium/large "
        "for boxes and masks) and write its detections as COCO results JSON.",
    )
    _model_args(p)
    p.add_argument("--data", default=None, help="COCO-layout root (default: the checkpoint's)")
    p.add_argument("--images", default=None, help="image folder (with --annotations)")
    p.add_argument("--annotations", default=None, help="instances JSON (with --images)")
    p.add_argument("--results", default=None, help="detections JSON (default: beside checkpoint)")
    p.add_argument("--batch-size", type=positive_int, default=2)
    p.add_argument("--max-samples", type=positive_int, default=None)
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_eval)


def _register_predict(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "predict",
        help="draw a detector's boxes, labels, scores and masks on images",
        description="Detect in each image and write <name>_detections.png with the boxes, "
        "labels, scores and masks above --score-thresh.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    _model_args(p)
    p.add_argument("--output-dir", default=None, help="where the PNGs go (default: beside each)")
    p.add_argument("--score-thresh", type=fraction, default=0.5)
    p.add_argument("--json", action="store_true", help="print the detections as JSON")
    p.set_defaults(func=_predict)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="nat detect or mmdetection checkpoint")
    p.add_argument("--architecture", default=None, help="for an mmdetection checkpoint")
    p.add_argument("--backbone", default=None, help="for an mmdetection checkpoint")
    p.add_argument("--num-classes", type=positive_int, default=None, help="with background")
    p.add_argument("--device", default=None)
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _train(args: argparse.Namespace) -> int:
    from ..tasks.detection import DetectConfig, load_config, train

    overrides = collect_overrides(args, _TRAIN_OVERRIDES)
    if args.resume and args.config is None:
        config = DetectConfig.from_dict(saved_config(args.resume))
    else:
        config = load_config(args.config or "shapes")
    result = train(config.replace(**overrides), resume=args.resume, progress=not args.no_progress)
    if result.is_main:
        _print(result.summary, args.json, "summary")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..tasks.detection import evaluate_checkpoint, load_detector

    loaded = load_detector(
        args.checkpoint,
        architecture=args.architecture,
        backbone=args.backbone,
        num_classes=args.num_classes,
    )
    result = evaluate_checkpoint(
        loaded,
        data=args.data,
        images=args.images,
        annotations=args.annotations,
        results=args.results,
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        device=args.device,
        amp=args.amp,
        progress=not args.no_progress,
    )
    _print(result, args.json, "eval")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..tasks.detection import load_detector, predict

    loaded = load_detector(
        args.checkpoint,
        architecture=args.architecture,
        backbone=args.backbone,
        num_classes=args.num_classes,
    )
    results = predict(
        loaded,
        args.images,
        output_dir=args.output_dir,
        score_thresh=args.score_thresh,
        device=args.device,
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"{r['image']} -> {r['output']}: {len(r['detections'])} detection(s)")
        for d in r["detections"]:
            print(f"  {d['label']:<12} {d['score']:.3f}  {d['box']}")
    return 0


def _print(values: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(values, indent=2))
        return
    rows = [(k, f"{v:.2f}" if isinstance(v, float) else str(v)) for k, v in values.items()]
    width = max(len(k) for k, _ in rows)
    print(title)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
