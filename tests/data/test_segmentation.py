"""Segmentation data: the ADE20K and mask-folder layouts, the synthetic scenes, the training
pipeline, and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nat.data import UnreadableImageError
from nat.data.segmentation import (
    IGNORE_INDEX,
    SegmentationFolder,
    SyntheticScenes,
    write_mask_folder,
)
from nat.data.segmentation_transforms import SegmentationTrain, rescale_size

from .folders import corrupt


def _samples(count: int, size: int = 16, classes: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        (
            rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8),
            rng.integers(0, classes, (size, size + 4), dtype=np.uint8),
        )
        for _ in range(count)
    ]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_mask_folder(
        tmp_path / "data", {"train": _samples(3), "val": _samples(2)}, ["a", "b", "c"]
    )


def test_mask_folder_reads_pairs_and_classes(folder: Path) -> None:
    data = SegmentationFolder(folder, "train")
    image, mask = data[1]
    assert (len(data), data.classes, image.shape, mask.shape) == (
        3,
        ["a", "b", "c"],
        (16, 20, 3),
        (16, 20),
    )
    assert np.array_equal(mask, _samples(3)[1][1])


def test_ade20k_layout_ignores_zero_and_shifts_labels(tmp_path: Path) -> None:
    for sub in ("images/training", "annotations/training"):
        (tmp_path / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images/training/a.jpg")
    Image.fromarray(
        np.array([[0, 1], [150, 2]], np.uint8).repeat(2, 0).repeat(2, 1), mode="L"
    ).save(tmp_path / "annotations/training/a.png")
    data = SegmentationFolder(tmp_path, "train")
    _, mask = data[0]
    assert len(data.classes) == 150 and data.classes[0] == "wall"
    assert mask[::2, ::2].tolist() == [[IGNORE_INDEX, 0], [149, 1]]


def test_missing_mask_names_the_image(folder: Path) -> None:
    (folder / "masks" / "train" / "00001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"images/train/00001.png has no mask"):
        SegmentationFolder(folder, "train")


def test_mask_without_image_names_the_mask(folder: Path) -> None:
    (folder / "images" / "val" / "00000.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"masks/val/00000.png has no image"):
        SegmentationFolder(folder, "val")


def test_size_mismatch_names_both_files(folder: Path) -> None:
    Image.fromarray(np.zeros((5, 5), np.uint8), mode="L").save(folder / "masks/train/00002.png")
    data = SegmentationFolder(folder, "train")
    with pytest.raises(ValueError, match=r"mask .*00002.png is 5x5 but image .*00002.png is 20x16"):
        data[2]


def test_label_outside_the_classes_names_the_mask(folder: Path) -> None:
    Image.fromarray(np.full((16, 20), 7, np.uint8), mode="L").save(folder / "masks/train/00000.png")
    with pytest.raises(ValueError, match=r"00000.png has label 7, outside the 3 classes"):
        SegmentationFolder(folder, "train")[0]


def test_ignore_index_is_a_valid_label(folder: Path) -> None:
    Image.fromarray(np.full((16, 20), IGNORE_INDEX, np.uint8), mode="L").save(
        folder / "masks/train/00000.png"
    )
    assert (SegmentationFolder(folder, "train")[0][1] == IGNORE_INDEX).all()


def test_unreadable_files_are_named(folder: Path) -> None:
    corrupt(folder / "masks/train/00000.png")
    corrupt(folder / "images/train/00001.png")
    data = SegmentationFolder(folder, "train")
    with pytest.raises(UnreadableImageError, match=r"cannot read mask .*00000.png"):
        data[0]
    with pytest.raises(UnreadableImageError, match=r"cannot read image .*00001.png"):
        data[1]


def test_folder_without_class_list_is_refused(folder: Path) -> None:
    (folder / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"classes\.txt"):
        SegmentationFolder(folder, "train")


def test_synthetic_scenes_are_fixed_and_hold_every_class() -> None:
    a, b = SyntheticScenes("train", size=32, count=40), SyntheticScenes("train", size=32, count=40)
    assert all(
        np.array_equal(a[i][0], b[i][0]) and np.array_equal(a[i][1], b[i][1]) for i in range(3)
    )
    assert not np.array_equal(a[0][0], SyntheticScenes("val", size=32)[0][0])
    labels = np.unique(np.concatenate([a[i][1].ravel() for i in range(40)]))
    assert labels.tolist() == list(range(len(a.classes)))


def test_rescale_fits_the_scale_keeping_the_aspect_ratio() -> None:
    assert rescale_size(500, 1000, (2048, 512)) == (512, 1024)
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)
    assert rescale_size(500, 1000, (2048, 512), ratio=0.5) == (256, 512)


def test_train_pipeline_crops_pads_and_caps_one_class() -> None:
    np.random.seed(0)
    image = np.zeros((40, 40, 3), np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    mask[:, 20:] = 1  # 24-wide crops from columns 0-2 or 14-16 are >= 75% one class

    def largest_share(cap: float) -> float:
        pipeline = SegmentationTrain(
            scale=(40, 40), ratio_range=(1.0, 1.0), crop_size=24, cat_max_ratio=cap,
            photometric=False,
        )  # fmt: skip
        shares = []
        for _ in range(30):
            x, y = pipeline(image, mask)
            assert x.shape == (3, 24, 24) and y.shape == (24, 24)
            shares.append(max((y == k).float().mean().item() for k in (0, 1)))
        return max(shares)

    assert largest_share(1.0) >= 0.75
    assert largest_share(0.75) < 0.75
    small = SegmentationTrain(scale=(8, 8), ratio_range=(1.0, 1.0), crop_size=16, photometric=False)
    _, padded = small(image[:8, :8], mask[:8, :8])
    assert (padded[8:] == IGNORE_INDEX).all() and (padded[:8, :8] == 0).all()
