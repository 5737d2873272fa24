"""Class sets are compared by name: a split or a checkpoint with other classes is refused."""

from __future__ import annotations

import shutil

import pytest

from nat.tasks.classification import train, validate

from ...data.folders import make_split_folder


def _drop_class(folder, split, name):
    shutil.rmtree(folder / split / name)


def test_training_refuses_a_val_split_with_other_classes(tiny, folder):
    _drop_class(folder, "val", "c1")
    with pytest.raises(ValueError, match=r"class mismatch.*missing: c1"):
        train(tiny, progress=False)


def test_validate_refuses_data_with_other_classes_than_the_checkpoint(tiny, tmp_path):
    result = train(tiny.replace(epochs=1), progress=False)
    other = make_split_folder(tmp_path / "other", classes=3, train=2, val=2)
    _drop_class(other, "val", "c1")
    with pytest.raises(ValueError, match=r"class mismatch.*missing: c1"):
        validate(
            "nat_digits",
            checkpoint=result.summary["checkpoint"],
            data=str(other),
            workers=0,
            progress=False,
        )
