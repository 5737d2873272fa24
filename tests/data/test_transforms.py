"""The training transform: the paper's RandAugment at every magnitude it can reach, and colour
jitter only where asked for."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from nat.data import create_train_transform

CONFIG = {
    "input_size": (3, 32, 32),
    "interpolation": "bicubic",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 0.875,
}


def test_rand_augment_at_the_top_magnitude_runs():
    """The recipe's ``rand-m9-mstd0.5-inc1`` reaches magnitude 10, where the increasing
    posterize keeps 0 bits (refused by Pillow 13): 30 ops a call at magnitude 10 hit it."""
    transform = create_train_transform(CONFIG, auto_augment="rand-m10-n30-mstd0-inc1")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8))
    random.seed(0)
    for _ in range(4):
        assert tuple(transform(image).shape) == (3, 32, 32)


def _jitters(transform) -> list:
    return [t for t in transform.transforms if isinstance(t, transforms.ColorJitter)]


@pytest.mark.parametrize("strength", [0, 0.0])
def test_no_colour_jitter_step_at_strength_zero(strength):
    """timm adds ``ColorJitter(0, 0, 0)`` for a strength of 0: a step that changes no pixel but
    draws a random permutation per image (time, and a shifted torch random stream)."""
    transform = create_train_transform(CONFIG, hflip=0.0, color_jitter=strength)
    assert _jitters(transform) == []
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8))
    torch.manual_seed(0)
    random.seed(0)
    transform(image)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))  # the transform drew nothing from torch's stream


def test_colour_jitter_step_at_positive_strength():
    (jitter,) = _jitters(create_train_transform(CONFIG, color_jitter=0.4))
    assert jitter.brightness == (0.6, 1.4)
