"""Salient maps: the input's size, non-zero, for every method; the side-by-side figure."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from nat.viz import METHODS, create_model, draw_saliency, model_input, salient_map, save_figure

from ..models.synthetic import synthetic_state_dict
from .conftest import tiny_nat


@pytest.mark.parametrize("method", list(METHODS))
def test_a_salient_map_has_the_input_size_and_is_not_zero(picture, method):
    model = tiny_nat()
    batch, shown = model_input(picture, model, 40)
    result = salient_map(model, batch, method, samples=3)
    assert result.values.shape == shown.shape[:2] == (40, 40)
    assert (result.values >= 0).all() and result.values.max() > 0
    assert 0 <= result.target < 10


def test_the_top_class_is_the_target(picture):
    model = tiny_nat()
    batch, _ = model_input(picture, model, 40)
    result = salient_map(model, batch)
    assert result.target == int(model(batch).argmax())


def test_timm_models_get_their_input_size(picture):
    model = create_model("test_vit", img_size=64)
    batch, _ = model_input(picture, model, 64)
    assert salient_map(model, batch).values.shape == (64, 64)


def test_unknown_method_and_model_are_refused(picture):
    model = tiny_nat()
    batch, _ = model_input(picture, model, 40)
    with pytest.raises(ValueError, match="method='cam'"):
        salient_map(model, batch, "cam")
    with pytest.raises(ValueError, match="'no_such_net'"):
        create_model("no_such_net")


def test_a_checkpoint_sets_the_weights(tmp_path):
    source = timm.create_model("test_vit", img_size=64)

    torch.save(source.state_dict(), tmp_path / "vit.pth")
    loaded = create_model("test_vit", img_size=64, checkpoint=tmp_path / "vit.pth")
    for a, b in zip(source.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_the_figure_has_a_row_per_image_and_a_column_per_model(picture, theme, tmp_path):
    model = tiny_nat()
    batch, shown = model_input(picture, model, 40)
    maps = {"A": [salient_map(model, batch)] * 2, "B": [salient_map(model, batch)] * 2}
    fig = draw_saliency([shown, shown], maps, "random weights", theme)
    assert np.array(fig.axes).size == 2 * 3
    (path,) = save_figure(fig, tmp_path / f"{theme}.png")
    assert path.stat().st_size > 1000


def test_a_nat_checkpoint_in_the_published_layout_loads(tmp_path):
    state = synthetic_state_dict("dinat_mini")
    torch.save(state, tmp_path / "dinat_mini.pth")
    model = create_model("dinat_mini", checkpoint=tmp_path / "dinat_mini.pth")
    assert torch.equal(model.state_dict()["head.weight"], state["head.weight"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["vit_base_patch16_224", "swin_tiny_patch4_window7_224", "nat_tiny"]
)
def test_the_paper_models_at_224(picture, name):
    model = create_model(name, img_size=224)
    batch, _ = model_input(picture, model, 224)
    values = salient_map(model, batch).values
    assert values.shape == (224, 224) and values.max() > 0
