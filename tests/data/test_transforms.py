"""The training transform runs the paper's RandAugment at every magnitude it can reach."""

import random

import numpy as np
from PIL import Image

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
