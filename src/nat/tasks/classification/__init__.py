"""Image classification on the engine: train (single process or DDP), evaluate, predict.

``CheckpointError``, ``load_checkpoint`` and ``save_checkpoint`` are :mod:`nat.engine`'s,
re-exported for the callers of this package's earlier API.
"""

from ...engine import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig, list_configs, load_config
from .evaluate import evaluate, validate
from .model import LoadedClassifier, create_classifier, load_classifier, load_classifier_weights
from .predict import predict
from .train import TrainResult, create_optimizer, train

__all__ = [
    "CheckpointError",
    "LoadedClassifier",
    "TrainConfig",
    "TrainResult",
    "create_classifier",
    "create_optimizer",
    "evaluate",
    "list_configs",
    "load_checkpoint",
    "load_classifier",
    "load_classifier_weights",
    "load_config",
    "predict",
    "save_checkpoint",
    "train",
    "validate",
]
