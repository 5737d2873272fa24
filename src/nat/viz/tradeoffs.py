"""The paper's trade-off plots: ImageNet top-1 against GMACs, training memory and throughput.

Accuracies are the published ones; parameters and GMACs are counted by
:func:`nat.models.count_gmacs` (224 x 224, ``meta`` device); peak training memory and inference
throughput come from a model benchmark result (:func:`nat.bench.run_models`, its JSON), measured
on the machine at hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch

from ..bench import run_models
from ..models import count_gmacs, count_params
from ..models.summary import PUBLISHED
from .canvas import pyplot

__all__ = [
    "FAMILIES",
    "TOP1",
    "TradeoffPoint",
    "draw_tradeoffs",
    "machine_label",
    "measure",
    "tradeoff_points",
]

FAMILIES: dict[str, tuple[str, ...]] = {
    "NAT": ("nat_mini", "nat_tiny", "nat_small", "nat_base"),
    "DiNAT": ("dinat_mini", "dinat_tiny", "dinat_small", "dinat_base"),
    "Swin": (
        "swin_tiny_patch4_window7_224",
        "swin_small_patch4_window7_224",
        "swin_base_patch4_window7_224",
    ),
    "ConvNeXt": ("convnext_tiny", "convnext_small", "convnext_base"),
}

TOP1: dict[str, float] = {
    **{name: p.top1 for name, p in PUBLISHED.items() if p.top1 is not None},
    # DiNAT paper (Hassani & Shi, 2022), ImageNet-1k at 224.
    "dinat_mini": 81.8,
    "dinat_tiny": 82.7,
    "dinat_small": 83.8,
    "dinat_base": 84.4,
    # Swin (Liu et al., 2021) and ConvNeXt (Liu et al., 2022), ImageNet-1k at 224.
    "swin_tiny_patch4_window7_224": 81.3,
    "swin_small_patch4_window7_224": 83.0,
    "swin_base_patch4_window7_224": 83.5,
    "convnext_tiny": 82.1,
    "convnext_small": 83.1,
    "convnext_base": 83.8,
}
"""Published ImageNet-1k top-1 (%) of each plotted model."""


@dataclass(frozen=True)
class TradeoffPoint:
    """One model: published ``top1``, counted ``params`` and ``gmacs`` (224 x 224), and, where
    the benchmark measured it, ``train_peak_mib`` and ``images_per_s``."""

    model: str
    family: str
    top1: float
    params: int
    gmacs: float
    train_peak_mib: float | None
    images_per_s: float | None


def _family(name: str) -> str:
    for family, names in FAMILIES.items():
        if name in names:
            return family
    raise ValueError(f"model {name!r} is not one of the plotted models {sorted(TOP1)}")


def _measured(bench: dict | None, dtype: str) -> tuple[dict[str, float], dict[str, float]]:
    """``(train peak MiB, images/s)`` per model: ``dtype`` rows, largest inference batch."""
    if bench is None:
        return {}, {}
    if bench.get("benchmark") != "models" or not isinstance(bench.get("rows"), list):
        raise ValueError("the benchmark result is not one of `nat bench models --json`")
    rows = [r for r in bench["rows"] if r.get("dtype") == dtype and not r.get("error")]
    memory = {
        r["model"]: r["peak_bytes"] / 2**20
        for r in rows
        if r["task"] == "train" and r.get("peak_bytes")
    }
    inference = sorted(
        (r for r in rows if r["task"].startswith("infer_b") and r.get("images_per_s")),
        key=lambda r: r["batch"],
    )
    speed = {r["model"]: r["images_per_s"] for r in inference}  # the largest batch last
    return memory, speed


def tradeoff_points(
    bench: dict | None = None, models: Sequence[str] | None = None, dtype: str = "float32"
) -> list[TradeoffPoint]:
    """A point per model of ``models`` (default: all of :data:`FAMILIES`), with the memory and
    throughput of ``bench`` (a ``nat bench models`` result) where it has ``dtype`` rows."""
    names = list(models) if models else [n for family in FAMILIES.values() for n in family]
    memory, speed = _measured(bench, dtype)
    points = []
    for name in names:
        family = _family(name)
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False).eval()
        gmacs, _ = count_gmacs(model, (3, 224, 224))
        points.append(
            TradeoffPoint(
                name, family, TOP1[name], count_params(model), gmacs,
                memory.get(name), speed.get(name),
            )
        )  # fmt: skip
    return points


def measure(
    models: Sequence[str],
    device: str = "cpu",
    batch_size: int = 8,
    train_batch: int = 8,
    img_size: int | None = None,
    repeats: int = 3,
    warmup: int = 1,
) -> dict:
    """Run the model benchmark (float32) on ``models``: the result :func:`tradeoff_points`
    reads. ``img_size`` other than 224 makes a quick run whose numbers are not the paper's."""
    return run_models(
        models, device=device, dtypes=(torch.float32,), batch_sizes=(batch_size,),
        train_batch=train_batch, img_size=img_size, repeats=repeats, warmup=warmup,
        baseline=models[0], target=models[0], progress=False,
    )  # fmt: skip


def machine_label(bench: dict) -> str:
    """Where a benchmark ran, in words: device, processor, cores, threads, library versions."""
    m = bench.get("machine", {})
    s = bench.get("settings", {})
    where = m.get("gpu") or f"{m.get('cpu', '?')} ({m.get('usable_cores', '?')} cores)"
    size = s.get("img_size") or 224
    return (
        f"measured on {where}, {m.get('torch_threads', '?')} threads, torch {m.get('torch', '?')}"
        f"; {size}x{size}, train batch {s.get('train_batch', '?')}, "
        f"inference batch {max(s.get('batch_sizes') or [0])}"
    )


_STYLE = {
    "NAT": ("o", "tab:blue"),
    "DiNAT": ("D", "tab:orange"),
    "Swin": ("s", "tab:green"),
    "ConvNeXt": ("^", "tab:red"),
}
"""Marker and colour per family, the same in every panel."""


def draw_tradeoffs(points: Sequence[TradeoffPoint], machine: str | None = None) -> Any:
    """Three panels: top-1 against GMACs, against peak training memory and against throughput;
    each family a line through its sizes. ``machine`` (see :func:`machine_label`) is written
    under the measured panels."""
    plt = pyplot()
    panels = [
        ("gmacs", "GMACs (224x224)"),
        ("train_peak_mib", "peak training memory (MiB)"),
        ("images_per_s", "inference throughput (images/s)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for ax, (field, label) in zip(axes, panels, strict=True):
        for family in FAMILIES:
            pts = [p for p in points if p.family == family and getattr(p, field) is not None]
            if not pts:
                continue
            xs = [getattr(p, field) for p in pts]
            marker, colour = _STYLE[family]
            ax.plot(xs, [p.top1 for p in pts], marker=marker, color=colour, label=family)
            for p, x in zip(pts, xs, strict=True):
                ax.annotate(
                    p.model.split("_")[1], (x, p.top1), fontsize=7,
                    textcoords="offset points", xytext=(4, -9),
                )  # fmt: skip
        ax.set_xlabel(label)
        ax.set_ylabel("ImageNet-1k top-1 (%)")
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    axes[0].legend(fontsize=8)
    fig.suptitle("Accuracy against compute, memory and throughput (published top-1)", fontsize=11)
    if machine:
        fig.text(0.5, 0.005, machine, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
