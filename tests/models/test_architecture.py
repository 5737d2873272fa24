"""NAT/DiNAT architecture: published state-dict layouts, exact sizes, any input size, arguments."""

from __future__ import annotations

from functools import cache

import pytest
import timm
import torch
from torch import nn

import nat  # noqa: F401  (registers the variants with timm)
from nat.models import NAT, NATBackbone, NATBlock
from nat.models.summary import PUBLISHED, count_gmacs, count_params

from .synthetic import published_shapes

PUBLISHED_VARIANTS = [
    "nat_mini", "nat_tiny", "nat_small", "nat_base",
    "dinat_mini", "dinat_tiny", "dinat_small", "dinat_base", "dinat_large",
]  # fmt: skip


def meta_model(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


@cache
def gmacs_at_224(name: str) -> tuple[float, float]:
    """(total, neighborhood attention) GMACs, counted once per variant."""
    return count_gmacs(meta_model(name), (3, 224, 224))


@pytest.mark.parametrize("name", PUBLISHED_VARIANTS)
def test_state_dict_matches_published_checkpoint(name):
    model = meta_model(name)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == published_shapes(name)


@pytest.mark.parametrize("name", [*PUBLISHED_VARIANTS, "dinat_large_384"])
def test_parameter_count_is_exact(name):
    assert count_params(meta_model(name)) == PUBLISHED[name].params


@pytest.mark.parametrize("name", [n for n in PUBLISHED if PUBLISHED[n].gmacs is not None])
def test_gmacs_at_224_match_the_paper(name):
    gmacs, _ = gmacs_at_224(name)
    assert gmacs == pytest.approx(PUBLISHED[name].gmacs, rel=0.01)


@pytest.mark.parametrize(
    ("name", "na_gmacs"),
    [("nat_mini", 0.14), ("nat_tiny", 0.20), ("nat_small", 0.30), ("nat_base", 0.40)],
)
def test_neighborhood_attention_share_of_gmacs(name, na_gmacs):
    _, na = gmacs_at_224(name)
    assert na == pytest.approx(na_gmacs, abs=0.005)


def test_dinat_large_gmacs():
    # The spec gives no GMACs for DiNAT-L. Its NA cost is NAT-Base's (same depths, resolutions
    # and window) scaled by the width 192/128; the total is the value measured when the
    # architecture was checked against the published parameter count (a regression guard).
    gmacs, na = gmacs_at_224("dinat_large")
    assert na == pytest.approx(gmacs_at_224("nat_base")[1] * 192 / 128, rel=1e-6)
    assert gmacs == pytest.approx(30.46, rel=0.01)


def test_backbone_state_dict_matches_mm_checkpoint():
    with torch.device("meta"):
        backbone = NATBackbone(
            embed_dim=64, mlp_ratio=3, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16)
        )
    shapes = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    assert shapes == published_shapes("nat_tiny_backbone")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dinat_tiny", [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]),
        ("dinat_mini", [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 3, [1] * 5]),
        ("dinat_large_384", [[1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1] * 5]),
        ("nat_tiny", [[1] * 3, [1] * 4, [1] * 18, [1] * 5]),
    ],
)
def test_dilation_schedule(name, expected):
    model = meta_model(name)
    dilations = [[b.attn.dilation[0] for b in level.blocks] for level in model.levels]
    assert dilations == expected


def test_layer_scale_only_where_published():
    assert meta_model("nat_small").levels[0].blocks[0].gamma1 is not None
    assert meta_model("dinat_small").levels[0].blocks[0].gamma1 is None


@pytest.mark.parametrize("size", [(64, 64), (61, 47), (33, 100), (9, 13)])
def test_any_input_size(size):
    # 9x13 leaves 1x1 maps at the deepest level, far below the 7x7 window (the padding rule).
    model = timm.create_model("nat_mini", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 5)


def test_dilated_windows_larger_than_the_feature_maps():
    # At 45x70, level 0 is 12x18: dilation 8 needs a 56-wide window, so the input is padded.
    model = timm.create_model("dinat_mini", num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 45, 70))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


def test_forward_features_is_channels_last_at_stride_32():
    model = timm.create_model("nat_mini").eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 64, 96))
    assert features.shape == (1, 2, 3, 512)


@pytest.mark.parametrize("mode", ["float32", "autocast", "bfloat16", "float16"])
def test_tokenizer_runs_cpu_convolutions_channels_last(mode):
    # oneDNN's CPU convolutions run faster on channels-last input (bf16/fp16 ~2x; float32's
    # 3-channel first convolution ~8x): the tokenizer hands them that layout, in the compute dtype.
    torch.manual_seed(0)
    tokenizer = timm.create_model("nat_mini").patch_embed
    dtype = getattr(torch, mode) if mode != "autocast" else torch.float32
    tokenizer.to(dtype)
    seen = []
    tokenizer.proj[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(2, 3, 32, 48, dtype=dtype)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=mode == "autocast"):
        out = tokenizer(x)
        expected = tokenizer.norm(tokenizer.proj(x).permute(0, 2, 3, 1))  # the plain NCHW path
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert seen[0].dtype == (torch.bfloat16 if mode == "autocast" else dtype)
    # Where oneDNN picks another float16 algorithm for the channels-last input (a Zen 3 EPYC,
    # without AVX-512), one element in 12,288 came out 7 float16 ulps off after the LayerNorm;
    # float32 ones agree to rounding.
    tolerance = {"rtol": 1e-2, "atol": 1e-3} if mode == "float16" else {}
    torch.testing.assert_close(out, expected, **tolerance)


@pytest.mark.parametrize("mode", ["autocast", "bfloat16"])
def test_reduced_precision_convolutions_match_autocasts_to_the_bit(mode):
    # The tokenizer's and downsamplers' convolutions cast their weights straight into
    # channels-last: the same outputs and gradients as nn.Conv2d's call under autocast.
    torch.manual_seed(0)
    model = timm.create_model("nat_mini")
    dtype = torch.bfloat16 if mode == "bfloat16" else torch.float32
    for conv, shape in (
        (model.patch_embed.proj[1], (2, 32, 16, 20)),
        (model.levels[0].downsample.reduction, (2, 64, 8, 10)),
    ):
        conv.to(dtype)
        x = torch.randn(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
        results = []
        for call in (conv, lambda t, c=conv: nn.Conv2d.forward(c, t)):
            conv.zero_grad(set_to_none=True)
            leaf = x.clone().requires_grad_()
            with torch.autocast("cpu", torch.bfloat16, enabled=mode == "autocast"):
                out = call(leaf)
            out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape).to(out.dtype))
            grads = [leaf.grad] + [p.grad for p in conv.parameters()]
            results.append((out, grads))
        (out, grads), (want, want_grads) = results
        assert out.dtype == torch.bfloat16 and torch.equal(out, want)
        assert len(grads) == len(want_grads)
        for g, h in zip(grads, want_grads, strict=True):
            assert g.dtype == h.dtype and torch.equal(g, h)


def test_digits_variant_config():
    model = timm.create_model("nat_digits")
    cfg = model.pretrained_cfg
    assert (cfg["input_size"], cfg["num_classes"], cfg["mean"], cfg["std"]) == (
        (3, 32, 32), 10, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    )  # fmt: skip
    with torch.no_grad():
        assert model.eval()(torch.randn(4, 3, 32, 32)).shape == (4, 10)


@pytest.mark.parametrize(("depths", "kernel"), [((1,), 5), ((1, 1, 1, 1, 1), 3), ((2, 1), 9)])
def test_any_number_of_levels_and_kernel_size(depths, kernel):
    heads = [1] * len(depths)
    model = NAT(
        embed_dim=8, mlp_ratio=2, depths=depths, num_heads=heads, kernel_size=kernel, num_classes=4
    )
    assert model.num_features == 8 * 2 ** (len(depths) - 1)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 40, 24)).shape == (1, 4)


def test_drop_path_rises_linearly_to_the_rate():
    model = NAT(embed_dim=8, mlp_ratio=2, depths=(2, 3), num_heads=(1, 1), drop_path_rate=0.4)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for level in model.levels for b in level.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_heads=(2, 4)), r"num_heads=\[2, 4\] must have one entry per level"),
        (dict(num_heads=(3, 4, 8)), r"num_heads\[0\]=3 must divide level 0's dim=32"),
        (dict(kernel_size=4), r"kernel_size=4 must be an odd positive integer"),
        (dict(dilations=[[1, 2], [1]]), r"dilations=.* one list per level"),
        (dict(depths=(2, 0, 1)), r"depths=\[2, 0, 1\] must be a non-empty list"),
        (dict(global_pool="max"), r"global_pool='max' must be 'avg' or ''"),
    ],
)
def test_invalid_arguments_are_named(kwargs, message):
    args = dict(embed_dim=32, mlp_ratio=2, depths=(2, 2, 2), num_heads=(2, 4, 8)) | kwargs
    with pytest.raises(ValueError, match=message):
        NAT(**args)


@pytest.mark.parametrize("shape", [(2, 30, 32), (2, 5, 6, 16)])
def test_block_names_a_wrong_input_shape(shape):
    block = NATBlock(32, 2, kernel_size=3)
    with pytest.raises(ValueError, match=r"input has shape .*expected channels-last .*dim=32"):
        block(torch.randn(shape))
