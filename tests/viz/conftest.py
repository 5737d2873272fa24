"""Small models and images for the figure tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nat.models import NAT


def tiny_nat(num_classes: int = 10) -> NAT:
    """Two levels; level 1's second block is dilated (kernel 3, dilation 2), as in DiNAT."""
    torch.manual_seed(0)
    return NAT(
        embed_dim=16, mlp_ratio=1.0, depths=[1, 2], num_heads=[1, 2], kernel_size=3,
        dilations=[[1], [1, 2]], num_classes=num_classes, drop_path_rate=0.0,
    ).eval()  # fmt: skip


@pytest.fixture
def nat_model() -> NAT:
    return tiny_nat()


@pytest.fixture
def picture() -> Image.Image:
    """A 48 x 40 RGB image with structure (a bright disc on a gradient)."""
    y, x = np.mgrid[0:40, 0:48]
    disc = ((x - 30) ** 2 + (y - 15) ** 2 < 80).astype(np.float32)
    rgb = np.stack([x / 48, y / 40, disc], axis=-1)
    return Image.fromarray((255 * rgb).astype(np.uint8))
