"""Image decoding: high bit depths scaled (not clipped), bombs refused, and class-set checks."""

import numpy as np
import pytest
from PIL import Image

from nat.data import UnreadableImageError, check_classes, decode_image


def _grey16(path, value: int):
    Image.fromarray(np.full((8, 8), value, dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    return path


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (32896, 128), (65535, 255)])
def test_16_bit_grey_png_is_scaled_to_8_bits(tmp_path, value, expected):
    image = decode_image(_grey16(tmp_path / "a.png", value))
    assert image.mode == "RGB"
    assert np.asarray(image).min() == np.asarray(image).max() == expected


def test_float_image_in_unit_range_is_scaled(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(path)
    assert np.asarray(decode_image(path)).max() == 128


def test_8_bit_images_are_unchanged(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert np.array_equal(np.asarray(decode_image(tmp_path / "a.png")), pixels)


def test_decompression_bomb_is_one_error_naming_the_file(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels > 2 x the limit
    with pytest.raises(UnreadableImageError, match=r"big\.png.*decompression bomb"):
        decode_image(tmp_path / "big.png")


def test_missing_image(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        decode_image(tmp_path / "nope.png")


def test_class_sets_must_match_naming_the_difference():
    check_classes(["a", "b", "c"], ["a", "b", "c"], "val/ against train/")
    with pytest.raises(ValueError, match=r"val/ against train/.*missing: b"):
        check_classes(["a", "b", "c"], ["a", "c"], "val/ against train/")
    with pytest.raises(ValueError, match=r"not expected: d"):
        check_classes(["a", "b", "c"], ["a", "b", "c", "d"], "val/ against train/")
    with pytest.raises(ValueError, match=r"another order"):
        check_classes(["a", "b"], ["b", "a"], "x")
