"""Tiny runs: nat_digits at 16x16 on a generated 3-class image folder, a few batches per epoch."""

from __future__ import annotations

import pytest

from nat.tasks.classification import TrainConfig

from ...data.folders import make_split_folder

# Every setting a test run needs, as `nat train --set` arguments would give them.
TINY = {
    "model": "nat_digits",
    "input_size": 16,
    "epochs": 2,
    "batch_size": 4,
    "lr": 1e-3,
    "lr_batch_size": 4,
    "warmup_epochs": 1,
    "hflip": 0.0,
    "color_jitter": 0.0,
    "auto_augment": None,
    "re_prob": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "amp": "none",
    "workers": 0,
    "device": "cpu",
}


@pytest.fixture
def folder(tmp_path):
    return make_split_folder(tmp_path / "data", classes=3, train=8, val=4)


@pytest.fixture
def tiny(folder, tmp_path) -> TrainConfig:
    return TrainConfig().replace(**TINY, data=str(folder), output=str(tmp_path / "run"))
