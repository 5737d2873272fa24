"""Detection models, the public entry point: ``nat.detection.mask_rcnn(backbone="nat_tiny")``,
``nat.detection.cascade_mask_rcnn(...)`` (see :mod:`nat.tasks.detection` for training,
evaluation and checkpoints)."""

from .tasks.detection import PAPER, Detector, cascade_mask_rcnn, create_detector, mask_rcnn

__all__ = ["PAPER", "Detector", "cascade_mask_rcnn", "create_detector", "mask_rcnn"]
