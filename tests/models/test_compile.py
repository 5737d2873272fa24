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


def _block_graph(block, x):
    from torch.fx.experimental.proxy_tensor import make_fx

    return make_fx(block)(x).graph


def test_block_adds_and_normalises_its_residual_stream_as_rows():
    """Inductor (CPU) lays out every 4D intermediate upstream of a convolution channels-last,
    reading [B, h, w, C]'s height as channels (height innermost: strided gathers in every residual
    and LayerNorm kernel). The block keeps its residual arithmetic on [B, h*w, C] rows instead."""
    from nat.models.nat import NATBlock

    block = NATBlock(32, 2, kernel_size=3, mlp_ratio=2.0, drop_path=0.1).train()
    graph = _block_graph(block, torch.randn(2, 5, 6, 32))
    targets = (torch.ops.aten.add.Tensor, torch.ops.aten.native_layer_norm.default)
    nodes = [n for n in graph.nodes if n.target in targets]
    assert len(nodes) == 4  # two residual adds, two LayerNorms
    for node in nodes:
        value = node.meta["val"]
        value = value[0] if isinstance(value, tuple) else value
        assert value.shape == (2, 30, 32), (node.target, tuple(value.shape))


@pytest.mark.slow
def test_inductor_gives_no_activation_a_channels_last_layout(mini):
    """The generated code allocates no [B, h, w, C] activation with the height innermost."""
    import re

    from torch._inductor.utils import run_and_get_code

    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        _, codes = run_and_get_code(torch.compile(mini), x)
    levels = {(2, 64 // s, 96 // s, c) for s, c in ((4, 64), (8, 128), (16, 256), (32, 512))}
    pattern = r"empty_strided_cpu\(\(([\d, ]+)\), \(([\d, ]+)\)"
    buffers = [
        tuple(tuple(int(v) for v in group.split(",")) for group in match)
        for match in re.findall(pattern, "".join(codes))
    ]
    found = [(size, stride) for size, stride in buffers if size in levels]
    assert found
    assert all(stride[-1] == 1 for _, stride in found), found
