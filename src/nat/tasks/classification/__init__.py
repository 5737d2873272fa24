"""Image classification: train (single process or DDP), evaluate, predict, checkpoints."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig, list_configs, load_config
from .evaluate import evaluate, validate
from .model import create_classifier, load_classifier_weights
from .predict import predict
from .train import TrainResult, train

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "create_classifier",
    "evaluate",
    "list_configs",
    "load_checkpoint",
    "load_classifier_weights",
    "load_config",
    "predict",
    "save_checkpoint",
    "train",
    "validate",
]
