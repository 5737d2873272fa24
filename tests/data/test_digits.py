from collections import Counter

import pytest

from nat.data import DigitsDataset


@pytest.fixture(scope="module")
def splits():
    return DigitsDataset("train"), DigitsDataset("test")


def test_split_is_80_20_of_all_1797_images(splits):
    train, test = splits
    assert (len(train), len(test)) == (1437, 360)


def test_split_is_stratified(splits):
    train, test = splits
    train_counts, test_counts = Counter(train.targets), Counter(test.targets)
    assert all(abs(train_counts[c] / 4 - test_counts[c]) <= 1 for c in range(10))


def test_split_is_fixed_by_the_seed(splits):
    again = DigitsDataset("test")
    assert [im.tobytes() for im in again.images] == [im.tobytes() for im in splits[1].images]


def test_splits_are_disjoint(splits):
    train, test = splits
    assert not {im.tobytes() for im in train.images} & {im.tobytes() for im in test.images}


def test_images_are_upscaled_rgb():
    image, label = DigitsDataset("test", image_size=24)[0]
    assert (image.size, image.mode, 0 <= label < 10) == ((24, 24), "RGB", True)


def test_val_is_the_test_split(splits):
    assert DigitsDataset("val").targets == splits[1].targets


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="split"):
        DigitsDataset("holdout")
