"""torch.compile, channels_last inputs and bf16 autocast."""

from __future__ import annotations

import pytest
import timm
import torch

import nat  # noqa: F401


@pytest.fixture(scope="module")
def mini():
    torch.manual_seed(0)
    return timm.create_model("nat_mini", num_classes=10).eval()


def test_compile_nat_mini_in_one_graph(mini):
    x = torch.randn(2, 3, 40, 56)
    compiled = torch.compile(mini, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), mini(x), atol=1e-5)


@pytest.mark.slow
def test_compile_nat_mini_with_inductor(mini):
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(mini)
    with torch.no_grad():
        assert torch.allclose(compiled(x), mini(x), atol=1e-4)


@pytest.mark.slow
def test_compiled_training_step_matches_eager():
    model = timm.create_model("nat_digits", drop_path_rate=0.0).train()
    x = torch.randn(4, 3, 32, 32)
    model(x).square().mean().backward()
    eager = model.levels[1].blocks[0].attn.rpb.grad.clone()
    model.zero_grad()
    torch.compile(model, backend="aot_eager")(x).square().mean().backward()
    assert torch.allclose(model.levels[1].blocks[0].attn.rpb.grad, eager, atol=1e-6)


def test_channels_last_input(mini):
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(mini(x.to(memory_format=torch.channels_last)), mini(x), atol=1e-5)


def test_bf16_autocast(mini):
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = mini(x)
    with torch.no_grad():
        reference = mini(x)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), reference, atol=0.05 * reference.abs().max().item())
