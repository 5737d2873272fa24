"""Gradient salient maps of image classifiers, side by side as in the NAT paper.

The attribution methods are captum's: vanilla gradients (``Saliency``), SmoothGrad
(``NoiseTunnel`` around ``Saliency``) and ``IntegratedGradients`` (from a black image). A map is
the absolute attribution, maximised over colour channels, for the model's top class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .canvas import pyplot, themed
from .models import normalization

__all__ = ["METHODS", "SalientMap", "draw_saliency", "salient_map"]

METHODS = {
    "gradients": "vanilla gradients",
    "smoothgrad": "SmoothGrad",
    "integrated-gradients": "integrated gradients",
}


@dataclass(frozen=True)
class SalientMap:
    """``values`` ``[H, W]`` (non-negative, the input's size) for class ``target`` of a model
    whose top-1 probability for it was ``probability``."""

    values: np.ndarray
    target: int
    probability: float


def _attributions(
    model: nn.Module, batch: torch.Tensor, target: int, method: str, samples: int
) -> torch.Tensor:
    try:
        from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
    except ImportError as err:
        raise RuntimeError("salient maps need captum: pip install 'nat[viz]'") from err
    if method == "gradients":
        return Saliency(model).attribute(batch, target=target, abs=True)
    if method == "smoothgrad":
        # SmoothGrad's noise: 15% of the input's range, as its authors recommend.
        stdev = 0.15 * float(batch.detach().max() - batch.detach().min())
        return NoiseTunnel(Saliency(model)).attribute(
            batch, target=target, nt_type="smoothgrad", nt_samples=samples,
            nt_samples_batch_size=1, stdevs=stdev, abs=True,
        )  # fmt: skip
    # A black image, in the model's normalisation.
    mean, std = (torch.tensor(v, dtype=batch.dtype) for v in normalization(model))
    black = (-mean / std).view(1, 3, 1, 1).expand_as(batch).contiguous()
    return IntegratedGradients(model).attribute(
        batch, baselines=black, target=target, n_steps=samples, internal_batch_size=1
    )


def salient_map(
    model: nn.Module, batch: torch.Tensor, method: str = "gradients", samples: int = 16
) -> SalientMap:
    """The salient map of ``model``'s top class for the image ``batch`` ``[1, 3, H, W]``.

    ``method`` is one of :data:`METHODS`; ``samples`` is SmoothGrad's number of noisy copies or
    the integration steps of integrated gradients.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {list(METHODS)}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples!r} must be an integer >= 1")
    if batch.dim() != 4 or batch.shape[:2] != (1, 3):
        raise ValueError(f"batch has shape {tuple(batch.shape)}; expected [1, 3, height, width]")
    model = model.eval()
    with torch.no_grad():
        probabilities = model(batch).softmax(-1)[0]
    target = int(probabilities.argmax())
    attributions = _attributions(model, batch.clone().requires_grad_(), target, method, samples)
    values = attributions.detach().abs().amax(dim=1)[0].float().numpy()
    return SalientMap(values, target, float(probabilities[target]))


def draw_saliency(
    images: Sequence[np.ndarray],
    maps: dict[str, Sequence[SalientMap]],
    title: str,
    theme: str = "light",
) -> Any:
    """One row per image: the image, then each model's map (columns named by ``maps``' keys).

    Each map is shown up to its 99th percentile, so a few extreme gradients do not wash it out.
    """
    plt = pyplot()
    colours = themed(theme)
    columns = ["Original", *maps]
    fig, axes = plt.subplots(
        len(images), len(columns), figsize=(2.2 * len(columns), 2.2 * len(images) + 0.5),
        squeeze=False,
    )  # fmt: skip
    fig.patch.set_facecolor(colours["background"])
    for row, image in enumerate(images):
        for col, name in enumerate(columns):
            ax = axes[row][col]
            if col == 0:
                ax.imshow(image)
            else:
                values = maps[name][row].values
                top = float(np.quantile(values, 0.99)) or 1.0
                ax.imshow(np.clip(values / top, 0, 1), cmap=colours["map"], vmin=0, vmax=1)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name, color=colours["text"], fontsize=9)
    fig.suptitle(title, color=colours["text"], fontsize=9)
    fig.tight_layout()
    return fig
