"""COCO-format instance datasets (an instances JSON and an image folder) with torchvision's
``tv_tensors``, and the paper's detection augmentation as transforms v2.

Bad input is refused when the dataset is opened, each case one error naming the file: JSON that
does not parse or lacks ``images``/``annotations``/``categories``, annotations naming an image or
a category that the file does not list, image files that do not exist, more categories than the
model has classes. Some problems are skipped and counted instead (``CocoInstances.skipped``):
boxes partly outside the image are clipped to it; boxes empty after clipping (or of zero width or
height) are dropped (``degenerate_boxes``); crowd regions are not training targets (``crowd``);
and, when ``skip_empty`` (training), images left without an annotation are left out
(``images_without_annotations``), as mmdetection's ``filter_empty_gt`` does.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .images import decode_image

__all__ = [
    "CocoInstances",
    "RandomSizeCrop",
    "detection_collate",
    "detection_eval_transform",
    "detection_train_transform",
    "read_coco",
]

Target = dict[str, Any]


def read_coco(annotations: str | os.PathLike[str]) -> COCO:
    """The instances file as a pycocotools ``COCO`` index, checked: it parses, has the three
    lists, and every annotation names a listed image and category."""
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"annotations={str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"annotations={str(path)!r} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise ValueError(
            f"annotations={str(path)!r} must be a JSON object with the lists 'images', "
            f"'annotations' and 'categories' (COCO instances format)"
        )
    try:
        image_ids = {im["id"] for im in data["images"]}
        category_ids = {c["id"] for c in data["categories"]}
        for ann in data["annotations"]:
            if ann["image_id"] not in image_ids:
                raise ValueError(
                    f"annotations={str(path)!r}: annotation {ann['id']} names image_id "
                    f"{ann['image_id']}, which is not among its images"
                )
            if ann["category_id"] not in category_ids:
                raise ValueError(
                    f"annotations={str(path)!r}: annotation {ann['id']} has category_id "
                    f"{ann['category_id']}, not among its categories {sorted(category_ids)}"
                )
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"annotations={str(path)!r} has an entry without the field {err} (COCO instances "
            f"format: images need id, annotations id/image_id/category_id/bbox)"
        ) from None
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


class CocoInstances(Dataset):
    """``(image, target)`` pairs: ``image`` a ``tv_tensors.Image`` ``[3, H, W]`` uint8, ``target``
    ``{"boxes": BoundingBoxes [N, 4] XYXY, "labels": [N] int64, "masks": Mask [N, H, W] uint8,
    "image_id": int}``; labels are 1..K in the order of the category ids (0 is the background).

    ``num_classes`` (with the background), when given, must be at least K + 1.
    """

    def __init__(
        self,
        images: str | os.PathLike[str],
        annotations: str | os.PathLike[str],
        *,
        transforms: Any = None,
        skip_empty: bool = False,
        num_classes: int | None = None,
    ) -> None:
        self.images = Path(images)
        self.annotations = Path(annotations)
        self.coco = read_coco(self.annotations)
        self.transforms = transforms
        self.category_ids = sorted(self.coco.cats)
        self.categories = [self.coco.cats[c].get("name", str(c)) for c in self.category_ids]
        self._label = {c: i + 1 for i, c in enumerate(self.category_ids)}
        if num_classes is not None and len(self.category_ids) + 1 > num_classes:
            raise ValueError(
                f"annotations={str(self.annotations)!r} has {len(self.category_ids)} categories, "
                f"more than the model's num_classes={num_classes} allows (categories + background)"
            )
        missing = [
            im["file_name"]
            for im in self.coco.dataset["images"]
            if not (self.images / im["file_name"]).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"annotations={str(self.annotations)!r} lists {len(missing)} image(s) missing "
                f"from {str(self.images)!r}, e.g. {missing[0]!r}"
            )
        self.skipped: Counter[str] = Counter()
        self._anns: dict[int, list[dict[str, Any]]] = {}
        for im in self.coco.dataset["images"]:
            self._anns[im["id"]] = self._usable(im, self.coco.imgToAnns.get(im["id"], []))
        self.ids = [i for i in sorted(self._anns) if self._anns[i] or not skip_empty]
        self.skipped["images_without_annotations"] = len(self._anns) - len(self.ids)

    def _usable(self, image: dict[str, Any], anns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The annotations that are training targets, with their boxes clipped to the image."""
        out = []
        height, width = image.get("height"), image.get("width")
        for ann in anns:
            if ann.get("iscrowd", 0):
                self.skipped["crowd"] += 1
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            x1, y1, x2, y2 = x, y, x + w, y + h
            if width and height:
                x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
                y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
            if x2 - x1 < 1 or y2 - y1 < 1:
                self.skipped["degenerate_boxes"] += 1
                continue
            out.append({**ann, "box": [x1, y1, x2, y2]})
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, Target]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        pil = decode_image(self.images / info["file_name"])
        width, height = pil.size
        image = tv_tensors.Image(torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1))
        anns = self._anns[image_id]
        boxes = torch.tensor([a["box"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        masks = np.zeros((len(anns), height, width), dtype=np.uint8)
        for i, ann in enumerate(anns):
            masks[i] = self._mask(ann, height, width)
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                boxes.clamp(min=0).clamp(max=torch.tensor([width, height, width, height])),
                format="XYXY",
                canvas_size=(height, width),
            ),
            "labels": torch.tensor(
                [self._label[a["category_id"]] for a in anns], dtype=torch.int64
            ),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "image_id": image_id,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    @staticmethod
    def _mask(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
        """The annotation's mask ``[H, W]``; its box when it has no segmentation."""
        segmentation = ann.get("segmentation")
        if not segmentation:
            mask = np.zeros((height, width), dtype=np.uint8)
            x1, y1, x2, y2 = (round(v) for v in ann["box"])
            mask[y1:y2, x1:x2] = 1
            return mask
        if isinstance(segmentation, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        return mask_utils.decode(rle).astype(np.uint8)

    def label_to_category(self, label: int) -> int:
        """The COCO category id of a model label (1..K)."""
        return self.category_ids[label - 1]


class RandomSizeCrop(v2.Transform):
    """A crop of random height and width, each uniform in ``[low, high]`` pixels (at most the
    image's), at a random place; mmdetection's ``RandomCrop(crop_type="absolute_range")``."""

    def __init__(self, low: int, high: int) -> None:
        super().__init__()
        if not 1 <= low <= high:
            raise ValueError(f"crop range [{low}, {high}] must satisfy 1 <= low <= high")
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_h, crop_w = (
            min(side, int(torch.randint(self.low, self.high + 1, ()))) for side in (height, width)
        )
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def detection_train_transform(
    scales: list[int],
    max_size: int,
    crop_scales: list[int],
    crop_range: list[int],
) -> v2.Transform:
    """The paper's (mmdetection 3x) augmentation: horizontal flip, then with equal chance a resize
    of the shorter side to one of ``scales`` (the longer at most ``max_size``), or a resize to
    one of ``crop_scales``, a :class:`RandomSizeCrop` in ``crop_range`` and the multi-scale resize;
    boxes left empty by the crop are dropped with their masks and labels; images become float32
    in [0, 1]."""
    multi_scale = v2.RandomShortestSize(scales, max_size)
    crop = v2.Compose(
        [
            v2.RandomShortestSize(crop_scales, max_size),
            RandomSizeCrop(*crop_range),
            v2.RandomShortestSize(scales, max_size),
        ]
    )
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(0.5),
            v2.RandomChoice([multi_scale, crop]),
            v2.SanitizeBoundingBoxes(min_size=1),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        ]
    )


def detection_eval_transform() -> v2.Transform:
    """Float32 in [0, 1]; the resize to the evaluation scale is the model's (its ``transform``),
    which maps the detections back to the original pixels."""
    return v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)


def detection_collate(batch: list[tuple[Any, Target]]) -> tuple[list[Any], list[Target]]:
    """A list of images (sizes differ) and a list of targets."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
