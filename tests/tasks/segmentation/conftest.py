"""A tiny UPerNet-NAT (a NAT-Mini with one block per level and 16 channels) for fast tests."""

from __future__ import annotations

import pytest

from nat.tasks.segmentation import UPerNet, upernet

TINY = dict(
    embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), kernel_size=3, drop_path_rate=0.0
)


def tiny_upernet(num_classes: int = 3, **kwargs) -> UPerNet:
    return upernet("nat_mini", num_classes, channels=16, aux_channels=8, **TINY, **kwargs)


@pytest.fixture
def model() -> UPerNet:
    return tiny_upernet()
