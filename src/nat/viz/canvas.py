"""What every figure shares: matplotlib (headless), the light and dark themes, images in and out.

Needs the ``viz`` extra (``pip install 'nat[viz]'``: matplotlib, captum).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..files import atomic_open

__all__ = ["THEMES", "as_array", "load_image", "pyplot", "save_figure", "themed"]

THEMES: dict[str, dict[str, str]] = {
    "light": {"background": "white", "text": "black", "map": "gray_r"},
    "dark": {"background": "black", "text": "white", "map": "gray"},
}
"""Per theme: figure background, text colour and the colour map of salient maps (salient pixels
are dark on the light theme, bright on the dark one)."""


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or a one-line install hint."""
    try:
        import matplotlib
    except ImportError as err:
        raise RuntimeError("figures need matplotlib: pip install 'nat[viz]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def themed(theme: str) -> dict[str, str]:
    """The colours of ``theme`` (one of :data:`THEMES`)."""
    if theme not in THEMES:
        raise ValueError(f"theme={theme!r} is not one of {sorted(THEMES)}")
    return THEMES[theme]


def load_image(path: str | Path) -> Image.Image:
    """An image file as RGB, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image {str(path)!r} is not a file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"image {str(path)!r} cannot be read: {err}") from None


def as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An RGB image as ``[H, W, 3]`` floats in ``[0, 1]``."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image has shape {array.shape}; expected [height, width, 3] (RGB)")
    return array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)


def save_figure(
    fig: Any, path: str | Path, formats: Sequence[str] = ("png",), dpi: int = 100
) -> list[Path]:
    """Write ``fig`` to ``path`` once per format (the suffix replaced); returns the files."""
    written = []
    for fmt in formats:
        target = Path(path).with_suffix(f".{fmt}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(target, "wb") as f:
            fig.savefig(f, format=fmt, dpi=dpi, facecolor=fig.get_facecolor(), bbox_inches="tight")
        written.append(target)
    return written
