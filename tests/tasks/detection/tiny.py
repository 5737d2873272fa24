"""Settings of a detector small enough for tests: nat_mini's layout at 16 channels, narrow heads,
64 px images (``DetectConfig(**TINY_SETTINGS).model_kwargs()`` builds the model)."""

from __future__ import annotations

from typing import Any

TINY_BACKBONE = {
    "embed_dim": 16,
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 2, 4, 8],
    "mlp_ratio": 2,
    "drop_path_rate": 0.0,
}
TINY_SETTINGS: dict[str, Any] = {
    "backbone": "nat_mini",
    "backbone_args": TINY_BACKBONE,
    "fpn_channels": 32,
    "representation": 64,
    "anchor_sizes": [8, 16, 32, 64, 128],
    "rpn_train_pre": 200,
    "rpn_train_post": 64,
    "rois_per_image": 32,
    "synthetic_images": [8, 4],
    "synthetic_size": 64,
    "train_scales": [56, 64, 72],
    "max_size": 96,
    "crop_scales": [48, 56],
    "crop_range": [40, 56],
    "eval_size": 64,
    "batch_size": 2,
    "epochs": 1,
    "warmup_iters": 2,
    "amp": "none",
    "workers": 0,
    "threads": 1,
}
