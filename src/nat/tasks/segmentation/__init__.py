"""Semantic segmentation on the engine: UPerNet with NAT (or any timm) backbones, trained on
ADE20K, a mask folder or generated scenes; evaluated single- or multi-scale; predictions as
colour overlays; mmsegmentation checkpoints loaded."""

from .checkpoints import from_mmseg, load_upernet_weights, to_mmseg
from .config import SegmentConfig, list_configs, load_config
from .inference import EvalProtocol, infer
from .metrics import confusion_matrix, segmentation_metrics
from .model import FCNHead, UPerNet, sync_batchnorm, upernet

__all__ = [
    "EvalProtocol",
    "FCNHead",
    "SegmentConfig",
    "UPerNet",
    "confusion_matrix",
    "from_mmseg",
    "infer",
    "list_configs",
    "load_config",
    "load_upernet_weights",
    "segmentation_metrics",
    "sync_batchnorm",
    "to_mmseg",
    "upernet",
]
