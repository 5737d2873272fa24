"""nat.nn.LayerNorm: CPU bfloat16 calls in the C++ kernel, nn.LayerNorm's everywhere else."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import nat.models  # noqa: F401  (registers NAT with timm)
from nat.nn import LayerNorm
from nat.ops import cpu

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="the CPU kernel is not built")

_BF16 = torch.bfloat16


def _norm(width: int, seed: int = 0) -> LayerNorm:
    torch.manual_seed(seed)
    norm = LayerNorm(width)
    with torch.no_grad():  # not the identity's 1 and 0
        norm.weight.normal_(1.0, 0.5)
        norm.bias.normal_(0.0, 0.5)
    return norm


def _reference(x, norm, dy):
    """The norm's output, input and parameter gradients in float64."""
    x64 = x.detach().double().requires_grad_()
    w64 = norm.weight.detach().double().requires_grad_()
    b64 = norm.bias.detach().double().requires_grad_()
    y = F.layer_norm(x64, (x.shape[-1],), w64, b64, norm.eps)
    y.backward(dy.double())
    return y.detach(), x64.grad, w64.grad, b64.grad


_BF16_ROUNDING = {"rtol": 2.0**-8, "atol": 1e-5}
"""bf16's rounding (half an ulp: 2^-9 relative), and an absolute allowance where the affine
step's terms cancel: a result near zero keeps float32's error of the terms (a few 1e-7)."""


@pytest.mark.parametrize("mode", ["bfloat16", "autocast-bfloat16", "autocast-float32"])
@pytest.mark.parametrize("width", [64, 256])
def test_kernel_path_matches_float64_to_rounding(mode, width):
    norm = _norm(width)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 50, width, generator=gen) * 3 + 1
    if mode != "autocast-float32":
        x = x.to(_BF16)
    x.requires_grad_()
    with torch.autocast("cpu", _BF16, enabled=mode.startswith("autocast")):
        y = norm(x)
    assert type(y.grad_fn).__name__ == "_LayerNormBFloat16Backward"  # the kernel ran
    assert y.dtype == _BF16 and y.shape == x.shape
    dy = torch.randn(y.shape, generator=gen).to(_BF16)
    y.backward(dy)
    want, dx, dw, db = _reference(x, norm, dy)
    # Rounded once from float32.
    torch.testing.assert_close(y.double(), want, **_BF16_ROUNDING)
    assert x.grad.dtype == x.dtype and norm.weight.grad.dtype == torch.float32
    if x.dtype == _BF16:
        torch.testing.assert_close(x.grad.double(), dx, **_BF16_ROUNDING)
    else:
        torch.testing.assert_close(x.grad.double(), dx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.weight.grad.double(), dw, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(norm.bias.grad.double(), db, rtol=1e-5, atol=1e-4)


def test_agrees_with_aten_to_a_bf16_ulp():
    norm = _norm(128, seed=2)
    x = (torch.randn(4096, 128) * 2).to(_BF16)
    with torch.no_grad():
        got = norm(x)
        want = nn.LayerNorm.forward(norm, x)
    assert (got != want).float().mean() < 1e-3  # about 1 in 40,000 on the machines measured
    # Where they differ, the two float32 values fell on either side of a rounding boundary: one
    # bf16 ulp apart (up to 2^-7 relative), or a few near zero, where the affine step cancels.
    torch.testing.assert_close(got, want, rtol=2.0**-7, atol=1e-5)


def test_weight_gradient_sums_many_rows_in_float32():
    # ATen's bf16 layer norm backward lost most of the bias gradient's value where its terms
    # cancel (0.7 relative error in NAT-Tiny's first norms); the kernel sums in float32.
    norm = _norm(64, seed=3)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(20000, 64, generator=gen).to(_BF16).requires_grad_()
    dy = (torch.randn(20000, 64, generator=gen) * 1e-2).to(_BF16)
    dy = dy - dy.float().mean(0).to(_BF16)  # sums near zero: cancellation
    norm(x).backward(dy)
    _, _, dw, db = _reference(x, norm, dy)
    torch.testing.assert_close(norm.bias.grad.double(), db, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(norm.weight.grad.double(), dw, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "case", ["float32", "odd-width", "strided", "no-affine", "flop-counter", "float64"]
)
def test_other_calls_are_nn_layer_norms(case):
    width = 20 if case == "odd-width" else 64
    norm = LayerNorm(width, elementwise_affine=case != "no-affine")
    x = torch.randn(6, 2 * width if case == "strided" else width)
    x = x.double() if case == "float64" else x if case == "float32" else x.to(_BF16)
    if case == "strided":
        x = x[:, ::2]
    norm.to(torch.float64 if case == "float64" else torch.float32)
    x.requires_grad_()
    if case == "flop-counter":
        with FlopCounterMode(display=False):
            y = norm(x)
    else:
        y = norm(x)
    assert type(y.grad_fn).__name__ == "NativeLayerNormBackward0"
    assert torch.equal(y, nn.LayerNorm.forward(norm, x))


def test_inference_and_double_backward():
    norm = _norm(64, seed=5)
    x = torch.randn(2, 7, 64).to(_BF16)
    with torch.no_grad():
        assert norm(x).grad_fn is None
        first = norm(x)
    with torch.inference_mode():
        assert torch.equal(norm(x), first)
    # A gradient penalty: the second derivative through differentiable ops.
    leaf = x.float().requires_grad_()
    y = norm(leaf.to(_BF16))
    (grad,) = torch.autograd.grad(y.float().square().sum(), leaf, create_graph=True)
    grad.square().sum().backward()
    want_leaf = x.float().requires_grad_()
    norm_ref = nn.LayerNorm(64)
    norm_ref.load_state_dict(norm.state_dict())
    y_ref = norm_ref(want_leaf.to(_BF16))
    (want,) = torch.autograd.grad(y_ref.float().square().sum(), want_leaf, create_graph=True)
    torch.testing.assert_close(grad, want, rtol=2e-2, atol=2e-2)
    assert norm.weight.grad is not None and torch.isfinite(norm.weight.grad).all()


def test_nat_uses_it_with_nn_layer_norms_keys():
    model = timm.create_model("nat_mini")
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(type(m) is LayerNorm for m in norms)
    reference = nn.LayerNorm(64)
    assert model.levels[0].blocks[0].norm1.state_dict().keys() == reference.state_dict().keys()


def test_kernel_refuses_bad_rows():
    module = cpu.module_for(_BF16)
    weight, bias = torch.ones(20), torch.zeros(20)
    with pytest.raises(RuntimeError, match="C = 20 must be a positive multiple"):
        module.layer_norm_bf16(torch.randn(4, 20), weight, bias, 1e-5)
    with pytest.raises(RuntimeError, match="x must be a contiguous float32 or bfloat16"):
        module.layer_norm_bf16(torch.randn(4, 64).double(), torch.ones(64), torch.zeros(64), 1e-5)
