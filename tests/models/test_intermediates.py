"""timm >= 1.0 conventions on the small variants: ``output_fmt``, ``forward_intermediates``,
``prune_intermediate_layers``, ``features_only`` (mm* backbone or timm's getter), torch.fx."""

from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from timm.models._features import FeatureGetterNet
from torch import nn

import nat
from nat.models import NAT, NATBackbone
from nat.nn import NeighborhoodAttention2D

TINY = dict(embed_dim=16, mlp_ratio=2, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))


def digits(**kwargs) -> NAT:
    torch.manual_seed(0)
    return timm.create_model("nat_digits", drop_path_rate=0.0, **kwargs).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(0))


def test_forward_features_is_channels_last_as_declared(images):
    model = digits()
    assert model.output_fmt == "NHWC"
    with torch.no_grad():
        features = model.forward_features(images)
    assert features.shape == (2, 2, 3, model.num_features)  # [B, h, w, C]: spatial axes 1, 2
    model.reset_classifier(0, "")
    with torch.no_grad():
        assert model(images).shape == features.shape


def test_backbone_declares_its_channels_first_outputs():
    assert NATBackbone(**TINY).output_fmt == "NCHW"


def test_intermediates_are_the_pre_downsample_levels_and_the_output_is_forward_features(images):
    model = digits()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(images)
        tokens = model.patch_embed(images)
        level0 = model.levels[0].forward_blocks(tokens)
        assert torch.equal(final, model.forward_features(images))
    assert [tuple(t.shape) for t in intermediates] == [
        (2, 32, 8, 10), (2, 64, 4, 5), (2, 128, 2, 3),
    ]  # fmt: skip
    assert [t.shape[1] for t in intermediates] == [i["num_chs"] for i in model.feature_info]
    assert torch.equal(intermediates[0], level0.permute(0, 3, 1, 2))


def test_intermediate_indices_norm_and_channels_last(images):
    model = digits()
    with torch.no_grad():
        final, (last,) = model.forward_intermediates(images, indices=1, output_fmt="NHWC")
        (raw,) = model.forward_intermediates(images, indices=[-1], intermediates_only=True)
        (normed,) = model.forward_intermediates(
            images, indices=[2], norm=True, intermediates_only=True
        )
    assert torch.equal(last.permute(0, 3, 1, 2), raw)
    # norm=True applies the final norm, which is sized for (and only fits) the last level.
    assert torch.equal(normed.permute(0, 2, 3, 1), final)
    assert not torch.equal(raw, normed)


def test_stop_early_skips_the_later_levels(images):
    model = digits()
    calls = []
    model.levels[2].register_forward_pre_hook(lambda *_: calls.append(2))
    model.levels[2].blocks[0].register_forward_pre_hook(lambda *_: calls.append("block"))
    with torch.no_grad():
        final, (first,) = model.forward_intermediates(images, indices=[0], stop_early=True)
    assert calls == [] and first.shape == (2, 32, 8, 10)
    assert final.shape == (2, 8, 10, 32)  # the level-0 features, not forward_features


def test_bad_indices_and_output_fmt_are_refused(images):
    model = digits()
    with pytest.raises(AssertionError, match="out of range"):
        model.forward_intermediates(images, indices=[3])
    with pytest.raises(ValueError, match="output_fmt='NLC' must be 'NCHW' or 'NHWC'"):
        model.forward_intermediates(images, output_fmt="NLC")


def test_prune_keeps_what_the_taken_levels_need(images):
    model = digits()
    with torch.no_grad():
        expected = model.forward_intermediates(images, indices=[0, 1], intermediates_only=True)
    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(model.levels) == 2 and model.levels[1].downsample is None
    assert isinstance(model.norm, nn.Identity) and isinstance(model.head, nn.Identity)
    assert model.num_features == model.head_hidden_size == 64
    with torch.no_grad():
        pruned = model.forward_intermediates(images, intermediates_only=True)
        assert torch.equal(model.forward_features(images).permute(0, 3, 1, 2), pruned[-1])
    assert all(torch.equal(a, b) for a, b in zip(pruned, expected, strict=True))


def test_prune_keeps_the_norm_for_the_last_level_unless_asked(images):
    model = digits()
    model.prune_intermediate_layers(3)
    assert isinstance(model.norm, nn.LayerNorm) and model.num_classes == 0
    model.prune_intermediate_layers(3, prune_norm=True)
    assert isinstance(model.norm, nn.Identity)


def test_features_only_getter_wraps_the_pruned_classifier(images):
    model = timm.create_model(
        "nat_digits", features_only=True, feature_cls="getter", out_indices=(0, 1)
    )
    assert isinstance(model, FeatureGetterNet) and isinstance(model.model, NAT)
    assert model.feature_info.channels() == [32, 64]
    assert model.feature_info.reduction() == [4, 8]
    assert len(model.model.levels) == 2
    reference = digits()
    model.model.load_state_dict(
        {k: v for k, v in reference.state_dict().items() if k in model.model.state_dict()}
    )
    with torch.no_grad():
        expected = reference.forward_intermediates(images, [0, 1], intermediates_only=True)
        outs = model.eval()(images)
    assert all(torch.equal(a, b) for a, b in zip(outs, expected, strict=True))


def test_unsupported_feature_classes_are_named():
    with pytest.raises(ValueError, match=r"feature_cls='hook' is not supported.*'getter'"):
        timm.create_model("nat_digits", features_only=True, feature_cls="hook")
    with pytest.raises(ValueError, match=r"feature_cls='getter' needs features_only=True"):
        timm.create_model("nat_digits", feature_cls="getter")


def test_backbone_outputs_are_its_normalised_intermediates(images):
    backbone = NATBackbone(**TINY, out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = backbone(images)
        raw = backbone.forward_intermediates(images, [1, 3], intermediates_only=True)
    assert torch.equal(outs[0], backbone.norm1(raw[0].permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    assert torch.equal(outs[1], backbone.norm3(raw[1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"level 0 has no norm0: norm=True takes only out_indices"):
        backbone.forward_intermediates(images, [0], norm=True)


def test_backbone_and_classifier_share_one_trunk():
    assert issubclass(NAT, nat.models.NATTrunk) and issubclass(NATBackbone, nat.models.NATTrunk)
    for method in ("forward_intermediates", "no_weight_decay", "load_pretrained"):
        assert getattr(NAT, method) is getattr(NATBackbone, method)


def test_backbone_norms_take_the_configured_norm_layer():
    backbone = NATBackbone(**TINY, norm_layer=partial(nn.LayerNorm, eps=1e-6), out_indices=(0,))
    backbone.select_outputs((0, 2))  # norm2 is built after construction: same factory
    assert [backbone.norm0.eps, backbone.norm2.eps] == [1e-6, 1e-6]
    assert backbone.patch_embed.norm.eps == 1e-6


def test_timm_features_only_norms_take_the_norm_layer():
    model = timm.create_model(
        "nat_digits", features_only=True, norm_layer=partial(nn.LayerNorm, eps=1e-6)
    )
    assert {model.norm0.eps, model.norm1.eps, model.norm2.eps} == {1e-6}


def test_attention_is_an_fx_leaf_and_the_model_traces(images):
    from torchvision.models.feature_extraction import create_feature_extractor

    assert NeighborhoodAttention2D in get_notrace_modules()
    model = digits()
    tracer = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    extractor = create_feature_extractor(
        model, return_nodes={"levels.1.blocks.1": "level1", "head": "logits"}, tracer_kwargs=tracer
    )
    with torch.no_grad():
        out = extractor(images)
        _, intermediates = model.forward_intermediates(images, output_fmt="NHWC")
        assert torch.equal(out["logits"], model(images))
    assert torch.equal(out["level1"], intermediates[1])
