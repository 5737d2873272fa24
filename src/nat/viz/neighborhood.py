"""One query's neighbourhood in a NAT/DiNAT block, with its attention weights, over the image.

The weights are the operator's (:func:`nat.query_attention_weights` on the block's own queries,
keys, scale and relative positional bias), so what is drawn is what the block computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..models import NATTrunk
from ..nn import NeighborhoodAttention2D
from ..ops import neighbors, query_attention_weights
from .canvas import pyplot

__all__ = ["NeighborhoodView", "block_neighborhood", "draw_neighborhood"]


@dataclass(frozen=True)
class NeighborhoodView:
    """A query of one block and its neighbourhood.

    ``image`` ``[H, W, 3]`` is the model's input as shown; ``grid`` the block's feature map
    ``(h, w)`` (each cell covers ``H / h x W / w`` pixels); ``query`` the query's cell
    ``(row, column)``; ``cells`` ``[prod(kernel_size), 2]`` its neighbours' cells in window order,
    ``valid`` ``[prod(kernel_size)]`` which of them are real, ``weights``
    ``[heads, prod(kernel_size)]`` their attention weights (each head's sum to one).
    """

    image: np.ndarray
    grid: tuple[int, int]
    query: tuple[int, int]
    cells: np.ndarray
    valid: np.ndarray
    weights: np.ndarray
    kernel_size: tuple[int, int]
    dilation: tuple[int, int]
    level: int
    block: int

    def cell_box(self, row: int, column: int) -> tuple[float, float, float, float]:
        """Pixel box ``(top, left, bottom, right)`` of a cell."""
        cell_h, cell_w = self.image.shape[0] / self.grid[0], self.image.shape[1] / self.grid[1]
        return row * cell_h, column * cell_w, (row + 1) * cell_h, (column + 1) * cell_w

    def weight_map(self, head: int | None = None) -> np.ndarray:
        """``[H, W]``: each neighbour cell's weight (mean over heads, or ``head``'s), else 0.

        Cells of the module's zero padding (inputs smaller than ``kernel_size * dilation``) lie
        outside the image and are left out.
        """
        weights = self.weights.mean(0) if head is None else self.weights[head]
        out = np.zeros(self.image.shape[:2], dtype=np.float32)
        for (row, column), ok, w in zip(self.cells, self.valid, weights, strict=True):
            if ok and row < self.grid[0] and column < self.grid[1]:
                top, left, bottom, right = (round(v) for v in self.cell_box(row, column))
                out[top:bottom, left:right] = w
        return out


def _attention_module(model: NATTrunk, level: int, block: int) -> NeighborhoodAttention2D:
    if not isinstance(model, NATTrunk):
        raise ValueError(
            f"neighbourhoods are drawn for NAT/DiNAT models; got {type(model).__name__}"
        )
    levels = len(model.levels)
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < levels:
        raise ValueError(f"level={level!r} must be in [0, {levels}) for this model")
    blocks = len(model.levels[level].blocks)
    if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < blocks:
        raise ValueError(f"block={block!r} must be in [0, {blocks}) for level {level}")
    return model.levels[level].blocks[block].attn


def block_neighborhood(
    model: NATTrunk,
    batch: torch.Tensor,
    shown: np.ndarray,
    level: int,
    block: int,
    pixel: tuple[int, int],
) -> NeighborhoodView:
    """The neighbourhood of the query under ``pixel`` ``(x, y)`` in block ``block`` of level
    ``level``, for the image ``batch`` ``[1, 3, H, W]`` (shown as ``shown`` ``[H, W, 3]``)."""
    attn = _attention_module(model, level, block)
    height, width = batch.shape[-2:]
    x, y = pixel
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"query=({x}, {y}) is outside the {width}x{height} image (x, y pixels)")
    captured: list[torch.Tensor] = []
    handle = attn.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            model.forward_intermediates(batch, [level], stop_early=True, intermediates_only=True)
    finally:
        handle.remove()
    tokens = captured[0]  # [1, h, w, C]
    grid = tuple(tokens.shape[1:3])
    # The module pads inputs smaller than its window, as NeighborhoodAttention2D.forward does.
    window = [k * d for k, d in zip(attn.kernel_size, attn.dilation, strict=True)]
    pad = [max(0, w - s) for w, s in zip(window, grid, strict=True)]
    if any(pad):
        tokens = F.pad(tokens, [0, 0, 0, pad[1], 0, pad[0]])
    with torch.no_grad():
        qkv = attn.qkv(tokens).unflatten(-1, (3, attn.num_heads, attn.head_dim))
        q, k = qkv[..., 0, :, :], qkv[..., 1, :, :]
        query = (y * grid[0] // height, x * grid[1] // width)
        window_args = dict(
            kernel_size=attn.kernel_size,
            stride=attn.stride,
            dilation=attn.dilation,
            is_causal=attn.is_causal,
        )
        cells, weights = query_attention_weights(
            q, k, query, scale=attn.scale, rpb=attn.rpb, **window_args
        )
    _, valid = neighbors(tuple(q.shape[1:3]), query, **window_args)
    return NeighborhoodView(
        image=shown,
        grid=grid,
        query=query,
        cells=cells.numpy(),
        valid=valid.numpy(),
        weights=weights[0].float().numpy(),
        kernel_size=attn.kernel_size,
        dilation=attn.dilation,
        level=level,
        block=block,
    )


def draw_neighborhood(
    view: NeighborhoodView, title: str, head: int | None = None, cmap: str = "viridis"
) -> Any:
    """The image with the query's neighbour cells coloured by weight and the query outlined."""
    plt = pyplot()
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    weights = view.weights.mean(0) if head is None else view.weights[head]
    shown = weights[view.valid]
    norm = Normalize(float(shown.min()), float(shown.max()))
    colours = plt.get_cmap(cmap)
    fig, ax = plt.subplots(figsize=(5.5, 5.5 * view.image.shape[0] / view.image.shape[1] + 0.6))
    ax.imshow(view.image)
    for (row, column), ok, w in zip(view.cells, view.valid, weights, strict=True):
        if not ok:
            continue
        top, left, bottom, right = view.cell_box(row, column)
        ax.add_patch(
            Rectangle(
                (left, top), right - left, bottom - top,
                facecolor=colours(norm(w)), alpha=0.65, edgecolor="white", linewidth=0.5,
            )
        )  # fmt: skip
    top, left, bottom, right = view.cell_box(*view.query)
    ax.add_patch(
        Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor="red", lw=2.5)
    )
    ax.set_xlim(0, view.image.shape[1])
    ax.set_ylim(view.image.shape[0], 0)
    ax.set_axis_off()
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=colours)
    which = "mean over heads" if head is None else f"head {head}"
    fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02, label=f"attention weight ({which})")
    kernel = "x".join(map(str, view.kernel_size))
    dilation = "x".join(map(str, view.dilation))
    ax.set_title(
        f"{title}\nlevel {view.level} block {view.block}: kernel {kernel}, dilation {dilation}, "
        f"{math.prod(view.kernel_size)} neighbours of cell {view.query}",
        fontsize=9,
    )
    return fig
