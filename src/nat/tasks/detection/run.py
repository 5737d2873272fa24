"""Using a trained detector: loading it from any checkpoint, scoring it on a COCO-format split
(``nat detect eval``) and drawing its detections on images (``nat detect predict``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ...data.coco import detection_collate
from ...data.images import decode_image
from ...engine import DistEnv, eval_loader, limit, load_checkpoint
from ...files import write_json
from .config import DetectConfig
from .evaluate import evaluate
from .model import Detector, create_detector
from .train import TRAIN_CHECKPOINT_FORMAT, data_root, open_split
from .weights import load_detector_weights

__all__ = ["LoadedDetector", "evaluate_checkpoint", "load_detector", "predict"]


@dataclass
class LoadedDetector:
    model: Detector
    config: DetectConfig
    categories: list[str] | None
    """Category names by label - 1 (``None`` when the checkpoint does not say)."""
    checkpoint: Path


def load_detector(
    checkpoint: str | os.PathLike[str],
    *,
    architecture: str | None = None,
    backbone: str | None = None,
    num_classes: int | None = None,
) -> LoadedDetector:
    """A detector from a ``nat detect train`` checkpoint (which says what it is), or from any
    other weights (an mmdetection checkpoint, a bare state dict) for ``architecture`` with
    ``backbone`` and ``num_classes`` (default 81, COCO's)."""
    path = Path(checkpoint)
    state = load_checkpoint(path)
    if state.get("format") == TRAIN_CHECKPOINT_FORMAT:
        config = DetectConfig.from_dict(state["config"])
        model = create_detector(
            config.architecture, config.backbone, state["num_classes"], **config.model_kwargs()
        )
        model.load_state_dict(state["model"])
        return LoadedDetector(model.eval(), config, list(state["categories"]), path)
    if architecture is None or backbone is None:
        raise ValueError(
            f"checkpoint={str(path)!r} is not a nat detect training checkpoint: give the "
            f"architecture and backbone it has (e.g. --architecture cascade_mask_rcnn "
            f"--backbone nat_tiny)"
        )
    config = DetectConfig(architecture=architecture, backbone=backbone)
    model = create_detector(architecture, backbone, num_classes or 81, **config.model_kwargs())
    load_detector_weights(model, path)
    return LoadedDetector(model.eval(), config, None, path)


def evaluate_checkpoint(
    loaded: LoadedDetector,
    *,
    data: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
    annotations: str | os.PathLike[str] | None = None,
    results: str | os.PathLike[str] | None = None,
    batch_size: int = 2,
    max_samples: int | None = None,
    device: str | None = None,
    amp: str = "none",
    progress: bool = True,
) -> dict[str, Any]:
    """COCO box and mask AP of ``loaded`` on a split: ``images`` + ``annotations``, else the
    validation split of ``data`` (default: the checkpoint's; the synthetic shapes are made again
    beside the checkpoint). Writes the detections (COCO results format) to ``results``
    (default ``detections.json`` beside the checkpoint)."""
    config = loaded.config
    env = DistEnv(device=torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    if images is not None or annotations is not None:
        if images is None or annotations is None:
            raise ValueError("give both images= and annotations= (or neither, with data=)")
        root = Path(".")
        config = config.replace(val_images=str(images), val_annotations=str(annotations))
    else:
        if data is not None:
            config = config.replace(data=str(data))
        root = data_root(config, loaded.checkpoint.parent / "shapes", env)
    dataset = open_split(config, root, "val", loaded.model.num_classes)
    loader = eval_loader(
        limit(dataset, max_samples), batch_size, env, workers=0, collate_fn=detection_collate
    )
    model = loaded.model.to(env.device)
    scores, detections = evaluate(model, loader, dataset, env, amp=amp, progress=progress)
    out = Path(results) if results is not None else loaded.checkpoint.parent / "detections.json"
    write_json(out, detections)
    return {
        "checkpoint": str(loaded.checkpoint),
        "annotations": str(dataset.annotations),
        "images": len(loader.dataset),
        "detections": len(detections),
        **scores,
        "results": str(out),
    }


@torch.no_grad()
def predict(
    loaded: LoadedDetector,
    images: list[str | os.PathLike[str]],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    score_thresh: float = 0.5,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Detect in each image; draw boxes, labels, scores and masks above ``score_thresh`` into
    ``<output_dir>/<name>_detections.png`` (default: beside the image). One dict per image:
    ``image``, ``output`` and its ``detections`` (``label``, ``score``, ``box`` x1 y1 x2 y2)."""
    if not 0 <= score_thresh <= 1:
        raise ValueError(f"score_thresh={score_thresh} must be in [0, 1]")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = loaded.model.to(dev).eval()
    out = []
    for path in map(Path, images):
        pixels = torch.from_numpy(np.asarray(decode_image(path)).copy())
        pixels = pixels.permute(2, 0, 1)
        result = model([F.to_dtype(pixels, torch.float32, scale=True).to(dev)])[0]
        keep = result["scores"] >= score_thresh
        boxes, scores = result["boxes"][keep].cpu(), result["scores"][keep].cpu()
        labels = [_name(loaded, int(i)) for i in result["labels"][keep]]
        drawn = pixels
        if keep.any():
            drawn = draw_segmentation_masks(drawn, result["masks"][keep, 0].cpu() > 0.5, alpha=0.45)
            captions = [f"{name} {s:.2f}" for name, s in zip(labels, scores.tolist(), strict=True)]
            drawn = draw_bounding_boxes(drawn, boxes, captions, colors="yellow", width=2)
        target = Path(output_dir) if output_dir is not None else path.parent
        target.mkdir(parents=True, exist_ok=True)
        png = target / f"{path.stem}_detections.png"
        F.to_pil_image(drawn).save(png)
        out.append(
            {
                "image": str(path),
                "output": str(png),
                "detections": [
                    {"label": name, "score": round(s, 4), "box": [round(v, 1) for v in b]}
                    for name, s, b in zip(labels, scores.tolist(), boxes.tolist(), strict=True)
                ],
            }
        )
    return out


def _name(loaded: LoadedDetector, label: int) -> str:
    if loaded.categories and 1 <= label <= len(loaded.categories):
        return loaded.categories[label - 1]
    return f"class {label}"
