"""Object detection and instance segmentation: Mask R-CNN and Cascade Mask R-CNN on NAT."""

from .model import PAPER, Detector, cascade_mask_rcnn, create_detector, mask_rcnn

__all__ = ["PAPER", "Detector", "cascade_mask_rcnn", "create_detector", "mask_rcnn"]
