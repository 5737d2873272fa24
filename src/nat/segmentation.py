"""Semantic segmentation, the public names: ``nat.segmentation.upernet("nat_tiny", 150)``.

The task lives in :mod:`nat.tasks.segmentation`; this module re-exports what a user calls.
"""

from .tasks.segmentation import (
    EvalProtocol,
    SegmentConfig,
    UPerNet,
    from_mmseg,
    infer,
    load_config,
    load_upernet_weights,
    to_mmseg,
    upernet,
)
from .tasks.segmentation.evaluate import evaluate
from .tasks.segmentation.predict import predict
from .tasks.segmentation.train import train

__all__ = [
    "EvalProtocol",
    "SegmentConfig",
    "UPerNet",
    "evaluate",
    "from_mmseg",
    "infer",
    "load_config",
    "load_upernet_weights",
    "predict",
    "to_mmseg",
    "train",
    "upernet",
]
