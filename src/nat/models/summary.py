"""Parameter and MAC counts of the variants, next to the published figures (the paper's table).

Counting allocates nothing: models are built on the ``meta`` device and run on fake tensors, so
the operator's FLOP formula (registered with ``FlopCounterMode``) counts neighborhood attention
and PyTorch counts every convolution and linear layer, as fvcore did for the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import timm
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["PUBLISHED", "ModelSummary", "Published", "count_gmacs", "count_params", "format_table"]


@dataclass(frozen=True)
class Published:
    """The published figures (``docs/nat-models.md``); ``None`` where the spec gives none."""

    params: int
    gmacs: float | None
    top1: float | None


PUBLISHED: dict[str, Published] = {
    "nat_mini": Published(19_984_174, 2.7, 81.8),
    "nat_tiny": Published(27_901_582, 4.3, 83.2),
    "nat_small": Published(50_743_297, 7.8, 83.7),
    "nat_base": Published(89_769_652, 13.7, 84.3),
    "dinat_mini": Published(19_984_174, 2.7, None),
    "dinat_tiny": Published(27_901_582, 4.3, None),
    "dinat_small": Published(50_719_681, 7.8, None),
    "dinat_base": Published(89_769_652, 13.7, None),
    "dinat_large": Published(200_943_514, None, None),
    "dinat_large_384": Published(200_943_514, None, None),
}


@dataclass(frozen=True)
class ModelSummary:
    name: str
    input_size: tuple[int, int, int]
    params: int
    gmacs: float
    na_gmacs: float
    published: Published | None


def count_params(model: nn.Module) -> int:
    """Number of parameters (works on ``meta`` models)."""
    return sum(p.numel() for p in model.parameters())


def count_gmacs(
    model: nn.Module, input_size: Sequence[int] = (3, 224, 224), batch_size: int = 1
) -> tuple[float, float]:
    """``(total, neighborhood attention)`` GMACs of one forward pass on ``[batch, *input_size]``.

    One MAC per multiply-add (``FlopCounterMode``'s FLOPs / 2); ``model`` may live on ``meta``.
    """
    with FakeTensorMode():
        tensors = {
            name: torch.empty(t.shape, dtype=t.dtype)
            for name, t in (*model.named_parameters(), *model.named_buffers())
        }
        x = torch.empty(batch_size, *input_size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            functional_call(model, tensors, (x,))
    counts = counter.get_flop_counts()["Global"]
    na = sum(v for op, v in counts.items() if "na_forward" in str(op))
    return counter.get_total_flops() / 2e9, na / 2e9


def model_table(
    names: Sequence[str] | None = None, img_size: int | None = None
) -> list[ModelSummary]:
    """One row per registered NAT/DiNAT variant (or ``names``), at its default input size."""
    registered = timm.list_models(["nat_*", "dinat_*"])
    names = list(names) if names else [n for n in _ordered(registered)]
    unknown = [n for n in names if n not in registered]
    if unknown:
        raise ValueError(f"names={unknown} are not registered NAT/DiNAT variants: {registered}")
    rows = []
    for name in names:
        with torch.device("meta"):
            model = timm.create_model(name).eval()
        chans, height, width = model.pretrained_cfg["input_size"]
        size = (chans, img_size or height, img_size or width)
        gmacs, na_gmacs = count_gmacs(model, size)
        rows.append(
            ModelSummary(name, size, count_params(model), gmacs, na_gmacs, PUBLISHED.get(name))
        )
    return rows


def _ordered(names: Sequence[str]) -> list[str]:
    order = list(PUBLISHED)
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def format_table(rows: Sequence[ModelSummary]) -> str:
    """A plain-text table: measured params/GMACs next to the published ones and top-1."""
    header = ("model", "input", "params", "(published)", "GMACs", "(NA)", "(published)", "top-1")
    lines = [header]
    for r in rows:
        pub = r.published
        lines.append(
            (
                r.name,
                "x".join(map(str, r.input_size[1:])),
                f"{r.params:,}",
                f"{pub.params:,}" if pub else "-",
                f"{r.gmacs:.3f}",
                f"{r.na_gmacs:.3f}",
                f"{pub.gmacs:.1f}" if pub and pub.gmacs is not None else "-",
                f"{pub.top1:.1f}" if pub and pub.top1 is not None else "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    return "\n".join([text[0], "  ".join("-" * w for w in widths), *text[1:]])
