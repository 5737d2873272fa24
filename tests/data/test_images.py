import logging

import pytest
import torch
from torch.utils.data import DataLoader

from nat.data import (
    ImageFolderDataset,
    UnreadableImageError,
    create_classification_dataset,
    dataset_classes,
    drop_skipped,
)

from .folders import corrupt, make_image_folder, make_split_folder


def test_folder_yields_images_and_sorted_class_indices(tmp_path):
    ds = ImageFolderDataset(make_image_folder(tmp_path, classes=3, per_class=2))
    image, target = ds[len(ds) - 1]
    assert (len(ds), ds.classes, image.mode, target) == (6, ["c0", "c1", "c2"], "RGB", 2)


def test_split_folders_are_found(tmp_path):
    make_split_folder(tmp_path, classes=2, train=3, val=2)
    train = create_classification_dataset(tmp_path, "train")
    val = create_classification_dataset(tmp_path, "val")
    assert (len(train), len(val), dataset_classes(val)) == (6, 4, ["c0", "c1"])


def test_corrupt_image_error_names_the_file(tmp_path):
    make_image_folder(tmp_path, classes=1, per_class=2)
    bad = corrupt(tmp_path / "c0" / "1.png")
    ds = ImageFolderDataset(tmp_path)
    with pytest.raises(UnreadableImageError, match=str(bad)):
        ds[1]


def test_corrupt_image_error_from_a_worker_is_one_line_naming_the_file(tmp_path):
    make_image_folder(tmp_path, classes=1, per_class=2)
    bad = corrupt(tmp_path / "c0" / "0.png")
    loader = DataLoader(ImageFolderDataset(tmp_path, transform=lambda im: 0), num_workers=1)
    with pytest.raises(UnreadableImageError) as info:
        list(loader)
    message = str(info.value)
    assert message.startswith(f"cannot read image {bad}") and "\n" not in message


def test_skip_bad_images_substitutes_the_next_image_with_a_warning(tmp_path, caplog):
    make_image_folder(tmp_path, classes=1, per_class=3)
    bad = corrupt(tmp_path / "c0" / "1.png")
    ds = ImageFolderDataset(tmp_path, transform=lambda im: torch.tensor(1), bad_images="replace")
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(ds))]
    assert len(items) == 3 and str(bad) in caplog.text


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_classification_dataset(tmp_path / "nope", "train")


def test_empty_directory_is_a_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        create_classification_dataset(tmp_path, "train")


def test_missing_split_folder_is_a_clear_error(tmp_path):
    make_image_folder(tmp_path / "train", classes=1, per_class=1)
    with pytest.raises(FileNotFoundError, match="no val/validation/test folder"):
        create_classification_dataset(tmp_path, "val")


def test_skipped_images_are_left_out_of_evaluation_batches(tmp_path):
    make_split_folder(tmp_path, classes=2, train=3, val=3)
    corrupt(tmp_path / "val" / "c0" / "1.png")
    val = create_classification_dataset(tmp_path, "val", skip_bad_images=True)
    val.transform = lambda im: torch.zeros(1)
    batches = list(DataLoader(val, batch_size=4, collate_fn=drop_skipped))
    targets = torch.cat([targets for _, targets in batches])
    assert targets.tolist() == [0, 0, 1, 1, 1]


def test_a_batch_of_only_skipped_images_is_none():
    assert drop_skipped([None, None]) is None
