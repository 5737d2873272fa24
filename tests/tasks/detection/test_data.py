"""COCO-format data: the synthetic shapes, loading with counted skips, one-line errors naming the
file for bad input, and the paper's augmentation keeping boxes and masks together."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from nat.data.coco import CocoInstances, detection_train_transform
from nat.data.shapes import make_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(
        tmp_path_factory.mktemp("shapes"), train_images=6, val_images=2, size=64
    )


def _digest(root) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def test_the_same_seed_writes_the_same_files(shapes, tmp_path):
    again = make_shapes_dataset(tmp_path / "again", train_images=6, val_images=2, size=64)
    other = make_shapes_dataset(tmp_path / "other", train_images=6, val_images=2, size=64, seed=1)
    assert _digest(again) == _digest(shapes) != _digest(other)


def test_masks_boxes_and_areas_agree(shapes):
    data = CocoInstances(shapes / "train2017", shapes / "annotations" / "instances_train2017.json")
    for i in range(len(data)):
        _, target = data[i]
        for box, mask in zip(target["boxes"], target["masks"], strict=True):
            ys, xs = torch.where(mask > 0)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def _write(tmp_path, images, annotations, categories=None, make_files=True):
    (tmp_path / "img").mkdir(exist_ok=True)
    if make_files:
        from PIL import Image

        for im in images:
            Image.new("RGB", (im["width"], im["height"])).save(tmp_path / "img" / im["file_name"])
    path = tmp_path / "instances.json"
    categories = categories or [{"id": 1, "name": "a"}, {"id": 7, "name": "b"}]
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return tmp_path / "img", path


def _image(i, w=40, h=30):
    return {"id": i, "file_name": f"{i}.png", "width": w, "height": h}


def _ann(i, image_id, bbox, category=1, **extra):
    return {"id": i, "image_id": image_id, "category_id": category, "bbox": bbox, **extra}


def test_bad_boxes_are_clipped_or_skipped_and_counted(tmp_path):
    anns = [
        _ann(1, 1, [30, 20, 20, 20]),  # partly outside: clipped to [30, 20, 40, 30]
        _ann(2, 1, [5, 5, 0, 10]),  # zero width
        _ann(3, 1, [50, 50, 5, 5]),  # wholly outside
        _ann(4, 1, [1, 1, 5, 5], iscrowd=1),
        _ann(5, 2, [2, 2, 0.5, 4]),  # image 2 keeps no box
    ]
    images, path = _write(tmp_path, [_image(1), _image(2)], anns)
    train = CocoInstances(images, path, skip_empty=True)
    assert dict(train.skipped) == {
        "degenerate_boxes": 3,
        "crowd": 1,
        "images_without_annotations": 1,
    }
    (_, target) = train[0]
    assert target["boxes"].tolist() == [[30, 20, 40, 30]]
    assert target["labels"].tolist() == [1]
    assert len(CocoInstances(images, path)) == 2  # evaluation keeps images without annotations


def test_labels_follow_the_order_of_category_ids(tmp_path):
    images, path = _write(tmp_path, [_image(1)], [_ann(1, 1, [1, 1, 9, 9], category=7)])
    data = CocoInstances(images, path)
    assert data[0][1]["labels"].tolist() == [2] and data.label_to_category(2) == 7


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"images": []}', "must be a JSON object with the lists"),
        (
            json.dumps(
                {
                    "images": [_image(1)],
                    "annotations": [_ann(1, 9, [0, 0, 1, 1])],
                    "categories": [{"id": 1}],
                }
            ),
            "names image_id 9",
        ),
        (
            json.dumps(
                {
                    "images": [_image(1)],
                    "annotations": [_ann(1, 1, [0, 0, 1, 1], category=5)],
                    "categories": [{"id": 1}],
                }
            ),
            "category_id 5",
        ),
        (
            json.dumps({"images": [{"file_name": "x"}], "annotations": [], "categories": []}),
            "without the field 'id'",
        ),
    ],
)
def test_malformed_annotations_are_one_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        CocoInstances(tmp_path, path)
    assert "bad.json" in str(err.value) and "\n" not in str(err.value)


def test_missing_images_are_named(tmp_path):
    images, path = _write(tmp_path, [_image(1), _image(2)], [], make_files=False)
    with pytest.raises(FileNotFoundError, match=r"2 image\(s\) missing .* '1\.png'"):
        CocoInstances(images, path)


def test_more_categories_than_the_model_has_classes(tmp_path):
    images, path = _write(tmp_path, [_image(1)], [])
    with pytest.raises(ValueError, match="num_classes=2"):
        CocoInstances(images, path, num_classes=2)


def test_augmentation_keeps_boxes_masks_and_labels_together(shapes):
    torch.manual_seed(0)
    transform = detection_train_transform([48, 56, 64], 96, [40, 48], [24, 40])
    data = CocoInstances(
        shapes / "train2017",
        shapes / "annotations" / "instances_train2017.json",
        transforms=transform,
    )
    sizes = set()
    for _ in range(4):
        for i in range(len(data)):
            image, target = data[i]
            assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
            height, width = image.shape[-2:]
            sizes.add(min(height, width))
            boxes, masks = target["boxes"], target["masks"]
            assert len(boxes) == len(masks) == len(target["labels"])
            assert masks.shape[-2:] == (height, width)
            for box, mask in zip(boxes, masks, strict=True):
                # the mask lies within its box, up to the up-scaling factor (here at most
                # 64 / 24): masks are resized by nearest neighbour, as in mmdetection
                x1, y1, x2, y2 = box.round().int().tolist()
                inside = mask[max(0, y1 - 3) : y2 + 3, max(0, x1 - 3) : x2 + 3].sum()
                assert inside > 0 and inside == mask.sum()
    assert sizes <= {48, 56, 64} and len(sizes) > 1
