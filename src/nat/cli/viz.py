"""``nat saliency``, ``nat neighborhood`` and ``nat plot``: figures of what the models see."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import CLIError, non_negative_int, positive_int

__all__ = ["register"]

DEFAULT_SALIENCY_MODELS = ["vit_base_patch16_224", "swin_tiny_patch4_window7_224", "nat_tiny"]


def _model_name(text: str) -> str:
    import timm

    from .. import models as _registers_nat  # noqa: F401

    if not timm.is_model(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a timm model name")
    return text


def _checkpoint(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH")
    return name, Path(path)


def _pixel(text: str) -> tuple[int, int]:
    parts = text.split(",")
    try:
        x, y = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not X,Y (two integers)") from None
    if x < 0 or y < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: X and Y must be >= 0")
    return x, y


def _img_size(text: str) -> int:
    value = positive_int(text)
    if value < 32:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 32")
    return value


def _untrained(names: list[str]) -> str:
    return f"random weights, no --checkpoint: {', '.join(names)}" if names else "trained weights"


def saliency_command(args: argparse.Namespace) -> int:
    from ..viz import create_model, draw_saliency, load_image, model_input, salient_map, save_figure
    from ..viz.saliency import METHODS

    checkpoints = dict(args.checkpoint or [])
    unknown = sorted(set(checkpoints) - set(args.models))
    if unknown:
        raise CLIError(f"--checkpoint {unknown[0]}=...: {unknown[0]} is not one of --models")
    images = [load_image(path) for path in args.images]
    maps: dict[str, list] = {}
    shown = []
    for name in args.models:
        model = create_model(name, args.img_size, checkpoints.get(name))
        maps[name] = []
        for i, image in enumerate(images):
            batch, crop = model_input(image, model, args.img_size)
            if len(shown) <= i:
                shown.append(crop)
            maps[name].append(salient_map(model, batch, args.method, args.samples))
    untrained = [n for n in args.models if n not in checkpoints]
    title = f"Salient maps ({METHODS[args.method]}, top class); {_untrained(untrained)}"
    for theme in ("light", "dark"):
        fig = draw_saliency(shown, maps, title, theme)
        out = args.out.with_name(f"{args.out.stem}-{theme}{args.out.suffix or '.png'}")
        for path in save_figure(fig, out, ("png",), dpi=args.dpi):
            print(f"wrote {path}")
    return 0


def neighborhood_command(args: argparse.Namespace) -> int:
    from ..viz import (
        block_neighborhood,
        create_model,
        draw_neighborhood,
        draw_receptive_fields,
        load_image,
        model_input,
        receptive_fields,
        save_figure,
    )

    if args.receptive_fields:
        if args.image is not None:
            raise CLIError("--receptive-fields draws no image: drop IMAGE")
        fig = draw_receptive_fields(receptive_fields(args.size), args.theme)
    else:
        if args.image is None:
            raise CLIError("IMAGE is required (or --receptive-fields)")
        model = create_model(args.model, args.img_size, args.checkpoint)
        batch, shown = model_input(load_image(args.image), model, args.img_size)
        query = args.query or (args.img_size // 2, args.img_size // 2)
        view = block_neighborhood(model, batch, shown, args.level, args.block, query)
        if args.head is not None and args.head >= view.weights.shape[0]:
            raise CLIError(f"--head={args.head} must be < {view.weights.shape[0]} (the heads)")
        state = "trained" if args.checkpoint else "random weights, no --checkpoint"
        fig = draw_neighborhood(view, f"{args.model} ({state}), query pixel {query}", args.head)
    for path in save_figure(fig, args.out, ("png",), dpi=args.dpi):
        print(f"wrote {path}")
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from ..viz import draw_tradeoffs, machine_label, measure, save_figure, tradeoff_points

    if args.bench is not None:
        try:
            bench = json.loads(args.bench.read_text())
        except json.JSONDecodeError as err:
            raise CLIError(f"--bench {args.bench}: not JSON ({err})") from None
        if not isinstance(bench, dict) or bench.get("benchmark") != "models":
            raise CLIError(f"--bench {args.bench} is not a `nat bench models --json` result")
    else:
        bench = measure(
            args.models, args.device, args.batch_size, args.train_batch, args.img_size,
            args.repeats, args.warmup,
        )  # fmt: skip
    points = tradeoff_points(bench, args.points)
    for p in points:
        memory = "-" if p.train_peak_mib is None else f"{p.train_peak_mib:.0f} MiB"
        speed = "-" if p.images_per_s is None else f"{p.images_per_s:.1f} img/s"
        print(f"{p.model}: top-1 {p.top1}, {p.gmacs:.2f} GMACs, {memory}, {speed}")
    fig = draw_tradeoffs(points, machine_label(bench))
    for path in save_figure(fig, args.out, ("png", "svg"), dpi=args.dpi):
        print(f"wrote {path}")
    return 0


def _names(text: str) -> list[str]:
    names = [_model_name(part.strip()) for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} holds no model name")
    return names


def _plotted(text: str) -> list[str]:
    from ..viz.tradeoffs import TOP1

    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in TOP1]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{unknown[0] if unknown else text!r} has no published top-1 here; one of "
            f"{', '.join(sorted(TOP1))}"
        )
    return names


def _common(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument("--out", type=Path, default=Path(out), help=f"file to write ({out})")
    parser.add_argument("--dpi", type=positive_int, default=100, help="resolution (100)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def register(subparsers: argparse._SubParsersAction) -> None:
    saliency = subparsers.add_parser(
        "saliency",
        help="salient maps of ViT, Swin and NAT side by side (PNG, light and dark)",
        description="Gradient salient maps (captum) of each model's top class, one row per "
        "image: Original | one column per model. Writes OUT-light.png and OUT-dark.png. Models "
        "without --checkpoint have random weights, and the title says so.",
    )
    saliency.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    saliency.add_argument(
        "--models", nargs="+", type=_model_name, default=DEFAULT_SALIENCY_MODELS,
        help=f"timm model names, one column each (default: {' '.join(DEFAULT_SALIENCY_MODELS)})",
    )  # fmt: skip
    saliency.add_argument(
        "--checkpoint", type=_checkpoint, action="append", metavar="NAME=PATH",
        help="weights for model NAME (repeatable)",
    )  # fmt: skip
    saliency.add_argument(
        "--method", choices=["gradients", "smoothgrad", "integrated-gradients"],
        default="gradients", help="attribution method (default: gradients)",
    )  # fmt: skip
    saliency.add_argument(
        "--samples", type=positive_int, default=16,
        help="SmoothGrad samples or integration steps (16)",
    )  # fmt: skip
    saliency.add_argument("--img-size", type=_img_size, default=224, help="input size (224)")
    _common(saliency, "saliency.png")
    saliency.set_defaults(func=saliency_command)

    nb = subparsers.add_parser(
        "neighborhood",
        help="one query's neighbourhood and attention weights in a NAT/DiNAT block (PNG)",
        description="Draw the (dilated) neighbourhood of the query under pixel X,Y in block "
        "--block of level --level, coloured by its attention weights, over the image; or, with "
        "--receptive-fields, the receptive fields of self-attention, Swin, NA and dilated NA.",
    )
    nb.add_argument("image", nargs="?", type=Path, metavar="IMAGE", help="image file")
    nb.add_argument("--model", type=_model_name, default="dinat_tiny", help="NAT/DiNAT variant")
    nb.add_argument("--checkpoint", type=Path, help="the model's weights (default: random)")
    nb.add_argument("--level", type=int, default=1, help="level, from 0 (default: 1)")
    nb.add_argument("--block", type=int, default=1, help="block in the level, from 0 (1)")
    nb.add_argument("--query", type=_pixel, help="query pixel X,Y (default: the centre)")
    nb.add_argument("--head", type=int, help="one head's weights (default: mean over heads)")
    nb.add_argument("--img-size", type=_img_size, default=224, help="input size (224)")
    nb.add_argument(
        "--receptive-fields", action="store_true",
        help="draw the receptive-field figure instead (no IMAGE)",
    )  # fmt: skip
    nb.add_argument("--size", type=_receptive_size, default=14, help="its token grid (14)")
    nb.add_argument("--theme", choices=["light", "dark"], default="light", help="its theme")
    _common(nb, "neighborhood.png")
    nb.set_defaults(func=neighborhood_command)

    plot = subparsers.add_parser(
        "plot",
        help="top-1 against GMACs, training memory and throughput (PNG and SVG)",
        description="The paper's plots for NAT, DiNAT, Swin and ConvNeXt: published top-1, "
        "GMACs counted by the code, peak training memory and inference throughput from a "
        "`nat bench models --json` result (--bench) or measured now on --models.",
    )
    plot.add_argument("--bench", type=Path, help="a `nat bench models --json` result")
    plot.add_argument(
        "--points", type=_plotted, help="models to plot (default: NAT, DiNAT, Swin, ConvNeXt)"
    )
    plot.add_argument(
        "--models", type=_names,
        default=["nat_mini", "nat_tiny", "swin_tiny_patch4_window7_224", "convnext_tiny"],
        help="without --bench: models to measure (default: nat_mini,nat_tiny,Swin-T,ConvNeXt-T)",
    )  # fmt: skip
    plot.add_argument("--device", default="cpu", help="without --bench: device (cpu)")
    plot.add_argument("--img-size", type=_img_size, help="without --bench: input size (224)")
    plot.add_argument("--batch-size", type=positive_int, default=8, help="inference batch (8)")
    plot.add_argument("--train-batch", type=positive_int, default=8, help="training batch (8)")
    plot.add_argument("--repeats", type=positive_int, default=3, help="timed repeats (3)")
    plot.add_argument("--warmup", type=non_negative_int, default=1, help="untimed repeats (1)")
    _common(plot, "tradeoffs.png")
    plot.set_defaults(func=plot_command)


def _receptive_size(text: str) -> int:
    value = positive_int(text)
    if value % 7 or value < 14:
        raise argparse.ArgumentTypeError(f"{text!r} is not a multiple of 7 (Swin's window) >= 14")
    return value
