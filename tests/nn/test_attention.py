"""NeighborhoodAttention1D/2D/3D: parameters, the padding rule, state-dict compatibility."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nat
from nat.ops.reference import na_reference
from nat.ops.spec import NAParams

MODULES = {
    1: nat.NeighborhoodAttention1D,
    2: nat.NeighborhoodAttention2D,
    3: nat.NeighborhoodAttention3D,
}


def manual(module, x):
    """The module's computation written out with the reference operator, padding included."""
    ndim = x.dim() - 2
    spatial = x.shape[1:-1]
    window = [k * d for k, d in zip(module.kernel_size, module.dilation, strict=True)]
    pad = [max(0, w - s) for w, s in zip(window, spatial, strict=True)]
    flat_pad = []
    for p in reversed(pad):
        flat_pad += [0, p]
    x = F.pad(x, [0, 0, *flat_pad])
    b = x.shape[0]
    qkv = x @ module.qkv.weight.T + module.qkv.bias
    qkv = qkv.reshape(b, *x.shape[1:-1], 3, module.num_heads, module.head_dim)
    q, k, v = (qkv[..., i, :, :] for i in range(3))
    params = NAParams(
        module.kernel_size, module.stride, module.dilation, module.is_causal, module.scale
    )
    out = na_reference(q, k, v, params, module.rpb).reshape(b, *x.shape[1:-1], -1)
    out = out[(slice(None), *(slice(0, s) for s in spatial))]
    assert out.dim() == ndim + 2
    return out @ module.proj.weight.T + module.proj.bias


@pytest.mark.parametrize(
    ("ndim", "spatial", "kernel", "dilation"),
    [
        (1, (10,), 3, 2),
        (2, (9, 7), 3, 1),
        (2, (5, 9), 3, 2),  # height 5 < 3 * 2: padded
        (2, (3, 4), 7, 1),  # smaller than the kernel on both axes
        (3, (4, 5, 3), 3, 1),
    ],
)
def test_module_is_qkv_then_na_then_proj_with_padding(ndim, spatial, kernel, dilation):
    torch.manual_seed(0)
    module = MODULES[ndim](12, 3, kernel, dilation=dilation).double()
    x = torch.randn(2, *spatial, 12, dtype=torch.float64)
    torch.testing.assert_close(module(x), manual(module, x))


def test_padding_tokens_act_as_keys_with_qkv_bias():
    """The padded positions are not masked out: with a non-zero qkv bias they change the output."""
    torch.manual_seed(0)
    module = nat.NeighborhoodAttention1D(4, 1, 5).double()
    torch.nn.init.normal_(module.qkv.bias)
    x = torch.randn(1, 3, 4, dtype=torch.float64)
    out = module(x)
    assert out.shape == (1, 3, 4)
    with torch.no_grad():
        module.qkv.bias.zero_()
    assert not torch.allclose(module(x), out)


def test_parameter_names_and_shapes_match_natten_014():
    module = nat.NeighborhoodAttention2D(64, 2, 7)
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert shapes == {
        "qkv.weight": (192, 64),
        "qkv.bias": (192,),
        "rpb": (2, 13, 13),
        "proj.weight": (64, 64),
        "proj.bias": (64,),
    }


def test_natten_014_state_dict_loads_strictly_and_reproduces_outputs():
    torch.manual_seed(0)
    source = nat.NeighborhoodAttention2D(32, 4, 5, dilation=2)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    target = nat.NeighborhoodAttention2D(32, 4, 5, dilation=2)
    target.load_state_dict(state, strict=True)
    x = torch.randn(1, 11, 12, 32)
    torch.testing.assert_close(target(x), source(x))


def test_without_rpb_has_no_rpb_parameter():
    module = nat.NeighborhoodAttention2D(16, 2, 4, rel_pos_bias=False, is_causal=(True, False))
    assert module.rpb is None
    assert "rpb" not in module.state_dict()
    assert module(torch.randn(1, 5, 6, 16)).shape == (1, 5, 6, 16)


def test_attention_dropout_path_equals_fused_path_without_dropout():
    torch.manual_seed(0)
    module = nat.NeighborhoodAttention2D(16, 2, 3, attn_drop=0.5)
    x = torch.randn(1, 6, 6, 16)
    module.eval()
    fused = module(x)
    module.attn_drop = 0.0
    module.train()
    torch.testing.assert_close(module(x), fused)


def test_attention_dropout_drops_in_training():
    torch.manual_seed(0)
    module = nat.NeighborhoodAttention2D(16, 2, 3, attn_drop=0.5).train()
    x = torch.randn(1, 6, 6, 16)
    assert not torch.allclose(module(x), module.eval()(x))


def test_qk_scale_overrides_default():
    module = nat.NeighborhoodAttention2D(16, 2, 3, qk_scale=0.1)
    assert module.scale == 0.1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(kernel_size=4), r"rel_pos_bias=True is only defined for odd kernel sizes"),
        (dict(kernel_size=3, stride=2), r"rel_pos_bias=True is only defined for stride 1"),
        (dict(kernel_size=3, is_causal=True), r"rel_pos_bias=True is not defined with causal"),
    ],
)
def test_rel_pos_bias_takes_the_operators_rpb_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nat.NeighborhoodAttention2D(8, 2, **kwargs)
    nat.NeighborhoodAttention2D(8, 2, rel_pos_bias=False, **kwargs)


def test_embed_dim_is_natten_spelling_of_dim():
    torch.manual_seed(0)
    ours = nat.NeighborhoodAttention2D(16, 2, 3, dilation=2)
    natten_style = nat.NeighborhoodAttention2D(
        embed_dim=16,
        num_heads=2,
        kernel_size=3,
        stride=1,
        dilation=2,
        is_causal=False,
        qkv_bias=True,
        qk_scale=None,
        proj_drop=0.0,
    )
    natten_style.load_state_dict(ours.state_dict())
    x = torch.randn(2, 9, 8, 16)
    torch.testing.assert_close(natten_style(x), ours(x))


def test_dim_and_embed_dim_together_is_an_error():
    with pytest.raises(TypeError, match=r"exactly once; got dim=16, embed_dim=16"):
        nat.NeighborhoodAttention1D(16, 2, 3, embed_dim=16)
    with pytest.raises(TypeError, match=r"kernel_size is required"):
        nat.NeighborhoodAttention1D(embed_dim=16, num_heads=2)


def test_qk_scale_zero_means_zero():
    module = nat.NeighborhoodAttention1D(16, 2, 3, qk_scale=0.0)
    assert module.scale == 0.0
