"""The drawn neighbourhood is the block's: its cells, its weights, its dilation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nat.viz import block_neighborhood, draw_neighborhood, model_input, save_figure


def view_at(model, picture, level, block, pixel):
    batch, shown = model_input(picture, model, 64)  # level 0: 16 x 16, level 1: 8 x 8 cells
    return block_neighborhood(model, batch, shown, level, block, pixel)


def cell_sets(view):
    return sorted({int(r) for r in view.cells[:, 0]}), sorted({int(c) for c in view.cells[:, 1]})


def test_the_map_paints_exactly_prod_kernel_cells(nat_model, picture):
    view = view_at(nat_model, picture, 1, 1, (32, 32))
    painted = view.weight_map() > 0
    assert view.weight_map().shape == (64, 64)
    assert len({tuple(c) for c in view.cells}) == 9
    assert painted.sum() == 9 * 8 * 8  # nine 8 x 8-pixel cells


def test_the_window_is_spread_by_the_dilation(nat_model, picture):
    view = view_at(nat_model, picture, 1, 1, (36, 36))  # cell (4, 4), dilation 2
    assert view.dilation == (2, 2)
    assert cell_sets(view) == ([2, 4, 6], [2, 4, 6])


def test_the_window_shifts_inwards_at_a_corner(nat_model, picture):
    dilated = view_at(nat_model, picture, 1, 1, (63, 0))  # pixel x=63, y=0: cell (0, 7)
    plain = view_at(nat_model, picture, 1, 0, (63, 0))
    assert cell_sets(dilated) == ([0, 2, 4], [3, 5, 7])
    assert cell_sets(plain) == ([0, 1, 2], [5, 6, 7])


def test_the_weights_are_what_the_block_applies(nat_model, picture):
    attn = nat_model.levels[1].blocks[1].attn
    seen = {}
    hooks = [
        attn.register_forward_pre_hook(lambda _m, a: seen.setdefault("x", a[0])),
        attn.proj.register_forward_pre_hook(lambda _m, a: seen.setdefault("out", a[0])),
    ]
    view = view_at(nat_model, picture, 1, 1, (20, 44))
    for h in hooks:
        h.remove()
    with torch.no_grad():
        v = attn.qkv(seen["x"]).unflatten(-1, (3, attn.num_heads, attn.head_dim))[0, ..., 2, :, :]
    rows, cols = torch.as_tensor(view.cells).T
    expected = torch.einsum("hp,phd->hd", torch.as_tensor(view.weights), v[rows, cols])
    row, col = view.query
    torch.testing.assert_close(seen["out"][0, row, col].view(attn.num_heads, -1), expected)
    np.testing.assert_allclose(view.weights.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("level", "block", "pixel", "message"),
    [(2, 0, (0, 0), "level=2"), (0, 1, (0, 0), "block=1"), (0, 0, (64, 0), r"query=\(64, 0\)")],
)
def test_a_query_outside_the_model_is_refused(nat_model, picture, level, block, pixel, message):
    with pytest.raises(ValueError, match=message):
        view_at(nat_model, picture, level, block, pixel)


def test_the_figure_is_written(nat_model, picture, tmp_path):
    view = view_at(nat_model, picture, 1, 1, (0, 0))
    (path,) = save_figure(draw_neighborhood(view, "tiny NAT"), tmp_path / "view.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
