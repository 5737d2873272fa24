"""Receptive fields come from the operators' masks: their sizes and places."""

from __future__ import annotations

import numpy as np
import pytest

from nat.viz import draw_receptive_fields, receptive_field, receptive_fields, save_figure


def block(rows, cols, size=14):
    mask = np.zeros((size, size), dtype=bool)
    mask[np.ix_(list(rows), list(cols))] = True
    return mask


@pytest.mark.parametrize(
    ("kind", "query", "expected"),
    [
        ("self-attention", (3, 9), block(range(14), range(14))),
        ("swin", (3, 9), block(range(7), range(7, 14))),
        # The shifted window of the corner holds tokens from three other corners: the mask keeps
        # only the 3 x 3 region the corner came from.
        ("shifted swin", (0, 0), block(range(3), range(3))),
        ("shifted swin", (7, 7), block(range(3, 10), range(3, 10))),
        ("na", (0, 0), block(range(7), range(7))),
        ("na", (7, 7), block(range(4, 11), range(4, 11))),
        ("dilated na", (0, 0), block(range(0, 14, 2), range(0, 14, 2))),
        ("dilated na", (7, 6), block(range(1, 14, 2), range(0, 14, 2))),
    ],
)
def test_masks(kind, query, expected):
    np.testing.assert_array_equal(receptive_field(kind, 14, query), expected)


def test_every_windowed_kind_sees_prod_kernel_tokens_from_the_centre():
    fields = receptive_fields(14)
    assert {kind: int(f["centre"].sum()) for kind, f in fields.items()} == {
        "self-attention": 196, "swin": 49, "shifted swin": 49, "na": 49, "dilated na": 49,
    }  # fmt: skip


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind='local'"):
        receptive_field("local", 14, (0, 0))


def test_the_figure_is_written(tmp_path):
    (path,) = save_figure(draw_receptive_fields(receptive_fields(14), "dark"), tmp_path / "rf")
    assert path.suffix == ".png" and path.stat().st_size > 1000
