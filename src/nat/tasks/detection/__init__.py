"""Object detection and instance segmentation: Mask R-CNN and Cascade Mask R-CNN with NAT
backbones on torchvision's detection parts; COCO-format data; training on the engine; COCO
evaluation; mmdetection checkpoints."""

from .config import DetectConfig, list_configs, load_config
from .evaluate import evaluate
from .model import PAPER, Detector, cascade_mask_rcnn, create_detector, mask_rcnn
from .run import LoadedDetector, evaluate_checkpoint, load_detector, predict
from .train import TrainResult, train
from .weights import from_mmdet, load_detector_weights, to_mmdet

__all__ = [
    "PAPER",
    "DetectConfig",
    "Detector",
    "LoadedDetector",
    "TrainResult",
    "cascade_mask_rcnn",
    "create_detector",
    "evaluate",
    "evaluate_checkpoint",
    "from_mmdet",
    "list_configs",
    "load_config",
    "load_detector",
    "load_detector_weights",
    "mask_rcnn",
    "predict",
    "to_mmdet",
    "train",
]
