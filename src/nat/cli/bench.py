"""``nat bench ops``, ``nat bench models`` and ``nat bench plot``: the benchmark suite."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import torch

from . import CLIError, non_negative_int, positive_int

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _positive_ints(text: str) -> list[int]:
    values = [positive_int(part) for part in _names(text)]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} holds no integer")
    return values


def _dtype(text: str) -> torch.dtype:
    if text not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; one of {', '.join(DTYPES)}")
    return DTYPES[text]


def _dtypes(text: str) -> list[torch.dtype]:
    values = [_dtype(name) for name in _names(text)]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} holds no dtype")
    return values


def _models(text: str) -> list[str]:
    import timm

    from .. import models as _registers_nat  # noqa: F401

    names = _names(text)
    unknown = [name for name in names if not timm.is_model(name)]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{unknown[0] if unknown else text!r} is not a timm model name (see timm.list_models())"
        )
    return names


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _common(parser: argparse.ArgumentParser, repeats: int) -> None:
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--threads", type=positive_int, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument(
        "--repeats", type=positive_int, help=f"timed repeats per measurement (default: {repeats})"
    )
    parser.add_argument(
        "--warmup", type=non_negative_int, help="untimed warm-up calls first (default: 2)"
    )
    parser.add_argument(
        "--malloc",
        choices=("pinned", "default"),
        help="pinned: fix glibc malloc's mmap/trim thresholds first, so that no model's "
        "timing depends on what the process allocated before it (see nat.bench.harness."
        "pin_malloc); default: leave them adaptive (default: pinned where the C library is glibc)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write all results as JSON")
    parser.add_argument("--plot", type=Path, metavar="PATH", help="draw the results (PNG)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes/models and few repeats: a smoke test"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="benchmark the operator and the models",
        description="Benchmark neighborhood attention against its baselines (ops) and NAT "
        "against Swin-T and ConvNeXt-T (models); redraw saved results (plot).",
    )
    commands = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)

    ops = commands.add_parser(
        "ops",
        help="neighborhood attention vs WSA, unfold-NA, dense SDPA and NATTEN",
        description="Time and peak memory of 2-D neighborhood attention through every backend, "
        "against Swin window attention (WSA), an unfold-based NA, dense SDPA and NATTEN "
        "(when installed), with each method's ratio to WSA.",
    )
    _common(ops, repeats=10)
    ops.add_argument(
        "--dtype", type=_dtype, default=torch.float32, help="one dtype (default: float32)"
    )
    ops.add_argument(
        "--shapes",
        type=_names,
        help="comma-separated names: stage1..stage4, stages, large, quick14, quick9, quick, "
        "nat-tiny-1..nat-tiny-4, k13-d1, k13-d4, 3d-k7, cuda (default: stages,large; on cuda: "
        "cuda; with --quick: quick)",
    )
    ops.add_argument(
        "--backends", type=_names, help="nat backends to run (default: every available one)"
    )
    ops.add_argument(
        "--baselines",
        type=_names,
        help="comma-separated from unfold, natten, wsa, sdpa (default: all; natten if installed)",
    )
    ops.add_argument(
        "--modes",
        type=_names,
        default=["forward", "forward+backward"],
        help="forward and/or forward+backward (default: both)",
    )
    ops.set_defaults(func=run_ops_command)

    models = commands.add_parser(
        "models",
        help="NAT vs Swin-T and ConvNeXt-T: images/s, training step, peak memory",
        description="Inference throughput and training step time/memory of timm models, "
        "with each model's ratio to the baseline (Swin-T).",
    )
    _common(models, repeats=5)
    models.add_argument(
        "--dtype",
        type=_dtypes,
        help="comma-separated (default: float32,bfloat16; on cuda: bfloat16)",
    )
    models.add_argument(
        "--models",
        type=_models,
        help="timm model names (default: nat_mini,nat_tiny,swin_tiny_patch4_window7_224,"
        "convnext_tiny; on cuda: nat_tiny,swin_tiny_patch4_window7_224; with --quick: "
        "test_vit,test_convnext)",
    )
    models.add_argument("--baseline", help="model the ratios refer to (default: Swin-T)")
    models.add_argument(
        "--onnx",
        action="store_true",
        help="also export each model to ONNX and time float32 inference in onnxruntime (CPU)",
    )
    models.add_argument(
        "--compile",
        action="store_true",
        help="also time each model under torch.compile (Inductor), with its compile time",
    )
    models.add_argument(
        "--breakdown",
        action="store_true",
        help="also time each eager call's operators one by one: where the time goes, by kind "
        "(attention, matmul, ...) and phase (forward, backward, optimizer)",
    )
    models.add_argument(
        "--same-linear",
        action="store_true",
        help="run every model's nn.Linear layers as NAT's run (nat.nn.use_nat_linear): like for "
        "like where NAT's float32 CPU linears use oneDNN and timm's the BLAS",
    )
    models.add_argument(
        "--batch-sizes",
        type=_positive_ints,
        help="inference batch sizes (default: 1,8; on cuda: 64)",
    )
    models.add_argument(
        "--train-batch", type=positive_int, help="training batch size (default: 8; on cuda: 64)"
    )
    models.add_argument(
        "--img-size", type=positive_int, help="input resolution (default: the model's)"
    )
    models.set_defaults(func=run_models_command)

    plot = commands.add_parser("plot", help="draw a saved JSON result (PNG)")
    plot.add_argument("result", type=Path, help="JSON written by --json")
    plot.add_argument("--out", type=Path, required=True, help="PNG file to write")
    plot.set_defaults(func=plot_command)


def _setup(args: argparse.Namespace) -> torch.device:
    from ..bench.harness import pin_malloc

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.malloc != "default":  # pinned, asked for or (unset) wherever pin_malloc can
        try:
            pin_malloc()
            args.malloc = "pinned"
        except RuntimeError as err:
            if args.malloc == "pinned":
                raise CLIError(f"--malloc=pinned: {err}") from None
            args.malloc = "default"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device={args.device}: CUDA is not available")
    return device


def _finish(args: argparse.Namespace, result: dict) -> int:
    from ..bench import format_result, plot_result, write_json

    print(format_result(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot_result(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _command(words: list[str], args: argparse.Namespace) -> str:
    """The command that repeats this run, every setting spelled out."""
    words += ["--malloc", args.malloc]
    if args.json:
        words += ["--json", str(args.json)]
    if args.plot:
        words += ["--plot", str(args.plot)]
    return shlex.join(words)


def run_ops_command(args: argparse.Namespace) -> int:
    from ..bench import ops

    device = _setup(args)
    default = ["cuda"] if device.type == "cuda" else ["stages", "large"]
    shapes = ops.shapes_by_name(args.shapes or (["quick"] if args.quick else default))
    repeats = args.repeats or (3 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    methods = ops.default_methods(device, args.backends, args.baselines)
    command = _command(
        [
            "nat",
            "bench",
            "ops",
            "--device",
            str(device),
            "--threads",
            str(torch.get_num_threads()),
            "--dtype",
            _dtype_name(args.dtype),
            "--repeats",
            str(repeats),
            "--warmup",
            str(warmup),
            "--shapes",
            ",".join(s.name for s in shapes),
            "--backends",
            ",".join(m.name.removeprefix("na/") for m in methods if m.name.startswith("na/")),
            "--baselines",
            ",".join(m.name for m in methods if not m.name.startswith("na/")),
            "--modes",
            ",".join(args.modes),
        ],
        args,
    )
    result = ops.run_ops(
        shapes,
        device,
        args.dtype,
        methods,
        repeats,
        warmup,
        args.modes,
        progress=not args.no_progress,
        command=command,
    )
    return _finish(args, result)


def run_models_command(args: argparse.Namespace) -> int:
    from ..bench import models as bench_models

    device = _setup(args)
    cuda = device.type == "cuda" and not args.quick
    default_models = bench_models.CUDA_MODELS if cuda else bench_models.DEFAULT_MODELS
    names = args.models or list(bench_models.QUICK_MODELS if args.quick else default_models)
    dtypes = args.dtype or ([torch.bfloat16] if cuda else [torch.float32, torch.bfloat16])
    baseline = args.baseline or (names[0] if args.quick else bench_models.BASELINE_MODEL)
    if baseline not in names:
        raise CLIError(f"--baseline={baseline!r} is not one of the models ({', '.join(names)})")
    batch_sizes = args.batch_sizes or (
        [1, 2] if args.quick else [bench_models.CUDA_BATCH] if cuda else [1, 8]
    )
    train_batch = args.train_batch or (2 if args.quick else bench_models.CUDA_BATCH if cuda else 8)
    repeats = args.repeats or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    words = [
        "nat",
        "bench",
        "models",
        "--device",
        str(device),
        "--threads",
        str(torch.get_num_threads()),
        "--dtype",
        ",".join(_dtype_name(d) for d in dtypes),
        "--repeats",
        str(repeats),
        "--warmup",
        str(warmup),
        "--models",
        ",".join(names),
        "--baseline",
        baseline,
        "--batch-sizes",
        ",".join(map(str, batch_sizes)),
        "--train-batch",
        str(train_batch),
    ]
    if args.img_size:
        words += ["--img-size", str(args.img_size)]
    if args.onnx:
        words.append("--onnx")
    if args.compile:
        words.append("--compile")
    if args.breakdown:
        words.append("--breakdown")
    if args.same_linear:
        words.append("--same-linear")
    result = bench_models.run_models(
        names,
        device,
        dtypes,
        batch_sizes,
        train_batch,
        args.img_size,
        repeats,
        warmup,
        baseline,
        progress=not args.no_progress,
        command=_command(words, args),
        onnx=args.onnx,
        compile=args.compile,
        breakdown=args.breakdown,
        same_linear=args.same_linear,
    )
    return _finish(args, result)


def plot_command(args: argparse.Namespace) -> int:
    from ..bench import plot_result

    try:
        result = json.loads(args.result.read_text())
    except json.JSONDecodeError as err:
        raise CLIError(f"{str(args.result)!r} is not valid JSON ({err})") from None
    if not isinstance(result, dict) or result.get("benchmark") not in ("ops", "models"):
        raise CLIError(f"{str(args.result)!r} is not a result written by nat bench --json")
    try:
        plot_result(result, args.out)
    except (KeyError, TypeError, IndexError) as err:
        raise CLIError(
            f"{str(args.result)!r} is an incomplete benchmark result ({err!r})"
        ) from None
    print(f"wrote {args.out}")
    return 0
