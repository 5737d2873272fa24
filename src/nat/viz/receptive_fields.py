"""Which tokens one query attends to, for self-attention, Swin's (shifted) windows, NA and DiNA.

Each mask comes from the operator itself: neighbourhoods from :func:`nat.ops.neighbors` (the
window geometry every backend runs; self-attention is neighborhood attention whose kernel covers
the input), Swin's windows from timm's ``window_partition`` and the ``attn_mask`` of a
``SwinTransformerBlock`` (the cyclic shift and the mask that keeps shifted regions apart).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from timm.models.swin_transformer import SwinTransformerBlock, window_partition

from ..ops import neighbors
from .canvas import pyplot, themed

__all__ = [
    "KINDS",
    "draw_receptive_fields",
    "queries",
    "receptive_field",
    "receptive_fields",
]

KINDS = ("self-attention", "swin", "shifted swin", "na", "dilated na")


def _swin_mask(size: int, window: int, shift: int, query: tuple[int, int]) -> np.ndarray:
    block = SwinTransformerBlock(
        dim=4, input_resolution=(size, size), num_heads=1, window_size=window, shift_size=shift
    )
    ids = torch.arange(size * size, dtype=torch.float32).view(1, size, size, 1)
    shifted = torch.roll(ids, shifts=(-block.shift_size[0], -block.shift_size[1]), dims=(1, 2))
    windows = window_partition(shifted, block.window_size).view(-1, block.window_area).long()
    flat = query[0] * size + query[1]
    w, slot = (int(i) for i in (windows == flat).nonzero()[0])
    allowed = windows[w]
    if block.attn_mask is not None:  # regions of a shifted window that wrap around stay apart
        allowed = allowed[block.attn_mask[w, slot] == 0]
    mask = np.zeros(size * size, dtype=bool)
    mask[allowed.numpy()] = True
    return mask.reshape(size, size)


def receptive_field(
    kind: str,
    size: int,
    query: tuple[int, int],
    window: int = 7,
    kernel_size: int = 7,
    dilation: int = 2,
) -> np.ndarray:
    """``[size, size]`` bool: the tokens the query at ``query`` ``(row, column)`` attends to.

    ``kind`` is one of :data:`KINDS`; Swin uses ``window`` (shifted by ``window // 2``), NA
    ``kernel_size``, dilated NA ``kernel_size`` and ``dilation``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {list(KINDS)}")
    if kind in ("swin", "shifted swin"):
        if size % window:
            raise ValueError(f"size={size} must be a multiple of window={window} for Swin")
        return _swin_mask(size, window, window // 2 if kind == "shifted swin" else 0, query)
    kernel, dil = {
        "self-attention": (size, 1),
        "na": (kernel_size, 1),
        "dilated na": (kernel_size, dilation),
    }[kind]
    coords, valid = neighbors((size, size), query, kernel, dilation=dil)
    mask = np.zeros((size, size), dtype=bool)
    mask[tuple(coords[valid].numpy().T)] = True
    return mask


def queries(size: int) -> dict[str, tuple[int, int]]:
    """The figure's queries on a ``size x size`` input: its centre and its top-left corner."""
    return {"centre": (size // 2, size // 2), "corner": (0, 0)}


def receptive_fields(
    size: int = 14, window: int = 7, kernel_size: int = 7, dilation: int = 2
) -> dict[str, dict[str, np.ndarray]]:
    """Every kind's mask for a centre and a corner query: ``{kind: {"centre"|"corner": mask}}``."""
    return {
        kind: {
            name: receptive_field(kind, size, q, window, kernel_size, dilation)
            for name, q in queries(size).items()
        }
        for kind in KINDS
    }


_TITLES = {
    "self-attention": "Self-attention",
    "swin": "Swin: window",
    "shifted swin": "Swin: shifted window",
    "na": "NA",
    "dilated na": "Dilated NA",
}


def draw_receptive_fields(
    fields: dict[str, dict[str, np.ndarray]], theme: str = "light", subtitle: str = ""
) -> Any:
    """A grid: one column per kind, one row per query; attended tokens filled, query in red."""
    plt = pyplot()
    from matplotlib.colors import ListedColormap

    colours = themed(theme)
    kinds = list(fields)
    names = list(next(iter(fields.values())))
    fig, axes = plt.subplots(
        len(names), len(kinds), figsize=(2.3 * len(kinds), 2.4 * len(names)), squeeze=False
    )
    fig.patch.set_facecolor(colours["background"])
    cells = ListedColormap(["#dddddd" if theme == "light" else "#333333", "#3b75af"])
    for row, name in enumerate(names):
        for col, kind in enumerate(kinds):
            ax = axes[row][col]
            mask = fields[kind][name]
            size = mask.shape[0]
            ax.imshow(mask, cmap=cells, vmin=0, vmax=1)
            query = queries(size)[name]
            ax.scatter([query[1]], [query[0]], s=30, c="red", marker="s")
            ax.set_xticks(np.arange(-0.5, size, 1), minor=True)
            ax.set_yticks(np.arange(-0.5, size, 1), minor=True)
            ax.grid(which="minor", color=colours["background"], linewidth=0.6)
            ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
            ax.set_title(
                f"{_TITLES.get(kind, kind)}\n{name} query: {int(mask.sum())} tokens",
                fontsize=8,
                color=colours["text"],
            )
    fig.suptitle(f"Receptive field of one query{subtitle}", color=colours["text"], fontsize=10)
    fig.tight_layout()
    return fig
