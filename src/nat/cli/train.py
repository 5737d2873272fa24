"""``nat train``, ``nat validate`` and ``nat predict``: image classification."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..data import DIGITS, INTERPOLATIONS, is_digits
from . import (
    CLIError,
    add_overrides,
    add_run_arguments,
    collect_overrides,
    fraction,
    non_negative_int,
    positive_int,
    saved_config,
)

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_train(subparsers)
    _register_validate(subparsers)
    _register_predict(subparsers)


# Flags that override a config setting; unset ones (None) keep the config's value.
_TRAIN_OVERRIDES = (
    ("--model", str, "model name registered with timm (e.g. nat_tiny, nat_digits)"),
    ("--data", str, "image folder (with train/ and val/), a timm dataset root, or 'digits'"),
    ("--dataset", str, "timm dataset name for create_dataset, e.g. torch/cifar10"),
    ("--output", str, "output directory (default runs/<time>-<model>); resumes if it has last.pt"),
    ("--epochs", int, "epochs (cosine schedule length, not counting cooldown)"),
    ("--batch-size", int, "batch size per process"),
    ("--grad-accum", int, "micro-batches accumulated per optimizer step"),
    ("--lr", float, "learning rate per lr_batch_size images (scaled to the global batch)"),
    ("--warmup-epochs", int, "warm-up epochs"),
    ("--workers", int, "data loader worker processes per process"),
    ("--threads", int, "CPU threads for intra-op parallelism (default: torch's)"),
    ("--seed", int, "random seed"),
    ("--amp", str, "mixed precision: auto, none, bf16, fp16"),
    ("--device", str, "cpu, cuda, cuda:1 (default: cuda if available)"),
    ("--num-classes", int, "number of classes (checked against the data)"),
    ("--drop-path", float, "stochastic depth rate"),
    ("--input-size", int, "input resolution"),
    ("--initial-checkpoint", str, "weights to start from"),
    ("--max-train-samples", int, "train on the first N images only"),
    ("--max-val-samples", int, "evaluate on the first N images only"),
)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train an image classifier (default: nat_digits on the embedded digits)",
        description="Train a classifier. With no arguments: nat_digits on scikit-learn's digits. "
        "Under torchrun (torchrun --nproc_per_node 8 -m nat train ...) it runs DDP.",
    )
    p.add_argument(
        "--config",
        default=None,
        help="named recipe (digits, nat_mini, nat_tiny, ...) or YAML file; default: digits for "
        "the digits, else the default settings (nat.tasks.classification.TrainConfig)",
    )
    add_overrides(p, _TRAIN_OVERRIDES)
    p.add_argument("--model-ema", action="store_true", default=None, help="keep an EMA of weights")
    p.add_argument(
        "--pretrained", action="store_true", default=None, help="start from timm weights"
    )
    p.add_argument(
        "--skip-bad-images", action="store_true", default=None, help="skip unreadable images"
    )
    add_run_arguments(p, "mixup=0 --set scale=[0.5,1]")
    p.set_defaults(func=_train)


def _register_validate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate",
        help="top-1/top-5 of a model on a dataset",
        description="Evaluate with the model's evaluation transform (NAT: resize 224/0.875 "
        "bicubic, centre crop 224). --data digits uses the embedded test split.",
    )
    p.add_argument("--model", default="nat_digits", help="model name (default nat_digits)")
    p.add_argument("--checkpoint", default=None, help="weights (training or published checkpoint)")
    p.add_argument("--pretrained", action="store_true", help="use timm's pretrained weights")
    p.add_argument("--data", default="digits", help="image folder, dataset root or 'digits'")
    p.add_argument("--dataset", default="", help="timm dataset name, e.g. torch/cifar10")
    p.add_argument("--split", default="val", choices=("train", "val"), help="split (default val)")
    p.add_argument("--num-classes", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--workers", type=non_negative_int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--input-size", type=positive_int, default=None)
    p.add_argument("--crop-pct", type=fraction, default=None)
    p.add_argument("--interpolation", default=None, choices=INTERPOLATIONS)
    p.add_argument("--max-samples", type=positive_int, default=None)
    p.add_argument("--skip-bad-images", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=_validate)


def _register_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="top-k classes of images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", default="nat_digits", help="model name (default nat_digits)")
    p.add_argument("--checkpoint", default=None, help="weights (default: timm's pretrained)")
    p.add_argument("--top-k", type=positive_int, default=5)
    p.add_argument("--num-classes", type=positive_int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=_predict)


def _train(args: argparse.Namespace) -> int:
    from ..tasks.classification import TrainConfig, load_config, train

    overrides = collect_overrides(
        args,
        _TRAIN_OVERRIDES,
        model_ema=args.model_ema,
        pretrained=args.pretrained,
        skip_bad_images=args.skip_bad_images,
    )
    if args.resume and args.config is None:
        config = TrainConfig.from_dict(saved_config(args.resume))
    elif args.config is None and not is_digits(overrides.get("data"), overrides.get("dataset", "")):
        config = TrainConfig()
    else:
        config = load_config(args.config or DIGITS)
    config = config.replace(**overrides)
    result = train(config, resume=args.resume, progress=not args.no_progress)
    if not result.is_main:  # under torchrun the summary is rank 0's to print
        return 0
    if args.json:
        print(json.dumps(result.summary, indent=2))
    else:
        _print_table([(k, _fmt(v)) for k, v in result.summary.items()], ("summary", ""))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from ..tasks.classification import validate

    if args.checkpoint is None and not args.pretrained:
        raise CLIError("give --checkpoint PATH or --pretrained")
    result = validate(
        args.model,
        checkpoint=args.checkpoint,
        data=args.data,
        dataset=args.dataset,
        split=args.split,
        num_classes=args.num_classes,
        batch_size=args.batch_size,
        workers=args.workers,
        amp=args.amp,
        input_size=args.input_size,
        crop_pct=args.crop_pct,
        interpolation=args.interpolation,
        max_samples=args.max_samples,
        skip_bad_images=args.skip_bad_images,
        pretrained=args.pretrained,
        device=args.device,
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        rows = [(k, _fmt(v)) for k, v in result.items() if k != "data_config"]
        _print_table(rows, ("validate", ""))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..tasks.classification import predict

    results = predict(
        args.images,
        args.model,
        checkpoint=args.checkpoint,
        top_k=args.top_k,
        num_classes=args.num_classes,
        device=args.device,
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    rows = [
        (r["image"] if rank == 0 else "", str(rank + 1), t["label"], f"{t['probability']:.4f}")
        for r in results
        for rank, t in enumerate(r["top"])
    ]
    _print_table(rows, ("image", "rank", "class", "probability"))
    return 0


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
