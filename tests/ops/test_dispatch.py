"""The dispatcher: per-call capability checks, ``auto``, the dense path and attention dropout."""

from __future__ import annotations

import pytest
import torch

import nat
from nat.ops import cpu, dispatch, torch_backend
from nat.ops.spec import NAParams


@pytest.fixture
def picky_backend():
    """A backend that declines head_dim > 4 and records the calls it runs."""
    calls = []

    def forward(*args):
        calls.append("forward")
        return torch_backend.na_forward(*args)

    def can_run(query, key, value, rpb, params):
        return f"head_dim {query.shape[-1]} > 4" if query.shape[-1] > 4 else None

    dispatch.register_backend(
        "picky", forward, torch_backend.na_backward, ("cpu",), priority=100, can_run=can_run
    )
    yield calls
    del dispatch._BACKENDS["picky"]


def qkv(head_dim: int, length: int = 9) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, length, 2, head_dim, generator=g) for _ in range(3))


def test_auto_takes_the_best_backend_that_can_run_the_call(picky_backend):
    nat.na1d(*qkv(4), 3)
    assert picky_backend == ["forward"]
    nat.na1d(*qkv(8), 3)  # declined: auto falls through to the next backend
    assert picky_backend == ["forward"]


def test_explicit_backend_that_cannot_run_names_why(picky_backend):
    with pytest.raises(ValueError, match=r"^backend='picky' head_dim 8 > 4$"):
        nat.na1d(*qkv(8), 3, backend="picky")


def test_explicit_backend_on_the_wrong_device_names_it():
    with pytest.raises(ValueError, match=r"backend='cpu' runs on \['cpu'\], but the inputs are"):
        dispatch.resolve_backend("cpu", torch.device("meta"))


def test_windows_covering_the_input_take_the_dense_path_for_any_backend(picky_backend):
    q, k, v = qkv(4, length=3)
    out = nat.na1d(q, k, v, 3, backend="picky")
    assert picky_backend == []
    torch.testing.assert_close(out, nat.na1d(q, k, v, 3, backend="reference"))


@pytest.mark.parametrize(("length", "fused"), [(49, True), (2049, False)])
def test_the_cpu_backend_keeps_its_fused_backward_on_covering_calls(length, fused):
    """The dense forward, then the kernel's backward; the GEMMs' backward once tables get big."""
    query = torch.empty(1, length, 1, 4)
    params = NAParams((length,), (1,), (1,), (False,), 0.5)
    implementation = dispatch._implementation("cpu", query, params)
    assert implementation.forward is torch_backend.dense_forward
    expected = cpu.na_backward if fused else torch_backend.dense_backward
    assert implementation.backward is expected


AVX2_BUILD = cpu.vector_lanes() == 8


@pytest.mark.parametrize(
    ("length", "dtype", "head_dim", "kernel"),
    [
        (49, torch.bfloat16, 32, True),
        (63, torch.float16, 32, True),
        (65, torch.bfloat16, 32, False),
        (49, torch.float32, 32, AVX2_BUILD),
        (64, torch.float32, 16, AVX2_BUILD),
        (65, torch.float32, 32, False),
        (49, torch.float32, 24, False),
    ],
)
def test_small_covering_calls_take_the_kernels_forward(length, dtype, head_dim, kernel):
    """bf16/fp16 up to 64 tokens, and float32 ones with a vector head dim where the kernel has 8
    lanes: the fused kernel's forward beats the dense one there."""
    query = torch.empty(1, length, 1, head_dim, dtype=dtype)
    params = NAParams((length,), (1,), (1,), (False,), 0.5)
    implementation = dispatch._implementation("cpu", query, params)
    assert (implementation.forward is cpu.na_forward) == kernel
    assert implementation.backward is cpu.na_backward


def test_attention_dropout_runs_on_the_backend_that_has_it():
    module = nat.NeighborhoodAttention1D(8, 2, 3, attn_drop=0.5, backend="torch").train()
    x = torch.randn(2, 9, 8, requires_grad=True)
    out = module(x)
    out.sum().backward()
    assert x.grad is not None
    assert not torch.equal(out, module.eval()(x))


def test_explicit_backend_without_attention_dropout_refuses_it():
    module = nat.NeighborhoodAttention1D(8, 2, 3, attn_drop=0.5, backend="reference").train()
    with pytest.raises(ValueError, match=r"backend='reference' has no attention dropout"):
        module(torch.randn(2, 9, 8))


def test_auto_with_attention_dropout_picks_a_backend_that_has_it():
    module = nat.NeighborhoodAttention1D(8, 2, 3, attn_drop=1.0).train()
    # Every weight dropped: the attention output is zero, so the module returns proj's bias.
    out = module(torch.randn(2, 9, 8))
    torch.testing.assert_close(out, module.proj.bias.expand_as(out))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_triton_without_a_gpu_or_the_interpreter_says_what_it_needs():
    q = torch.randn(1, 8, 1, 4)
    with pytest.raises(ValueError, match=r"backend='triton' is not available on this machine; "
                       r"it runs on cuda \(or on cpu under TRITON_INTERPRET=1\)"):  # fmt: skip
        nat.na1d(q, q, q, 3, backend="triton")


@pytest.fixture
def autograd_backend():
    """A backend whose gradients come from autograd through its own forward (as flex's do), with
    a registered backward that must never run."""
    from nat.ops import reference

    calls = []

    def differentiable(query, key, value, rpb, params):
        calls.append(torch.is_autocast_enabled("cpu"))
        out, lse = reference.na_reference(query, key, value, params, rpb, return_lse=True)
        return out, lse.flatten(1, -2).transpose(1, 2)

    def backward(*args, **kwargs):
        raise AssertionError("the op's backward ran")

    dispatch.register_backend(
        "differentiable",
        torch_backend.na_forward,
        backward,
        ("cpu",),
        autograd_forward=differentiable,
    )
    yield calls
    del dispatch._BACKENDS["differentiable"]


def test_gradients_come_from_the_backends_own_autograd(autograd_backend):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 8, 2, 16, generator=g, requires_grad=True) for _ in "qkv")
    rpb = torch.randn(2, 5, 5, generator=g, requires_grad=True)
    inputs = (q, k, v, rpb)

    def loss(backend):
        out, lse = nat.na2d(q, k, v, 3, dilation=2, rpb=rpb, backend=backend, return_lse=True)
        return out.sin().sum() + lse.cos().sum()

    got = torch.autograd.grad(loss("differentiable"), inputs)
    want = torch.autograd.grad(loss("torch"), inputs)
    for g_, w in zip(got, want, strict=True):
        torch.testing.assert_close(g_, w)
    assert autograd_backend == [False]
    with torch.no_grad():  # inference runs the registered forward, not the differentiable one
        nat.na2d(q, k, v, 3, backend="differentiable")
    assert autograd_backend == [False]


def test_modules_and_autocast_train_through_the_backends_own_autograd(autograd_backend):
    layer = nat.NeighborhoodAttention2D(32, 2, 3, backend="differentiable")
    x = torch.randn(2, 6, 7, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().sum().backward()
    assert autograd_backend == [False]  # autocast is off inside, inputs already cast
    assert layer.qkv.weight.grad is not None and layer.rpb.grad is not None


def test_compiled_training_through_the_backends_own_autograd(autograd_backend):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 7, 2, 16, generator=g, requires_grad=True)

    def fn(q):
        return nat.na2d(q, q, q, 3, backend="differentiable").square().sum()

    want = torch.autograd.grad(fn(q), q)[0]
    got = torch.autograd.grad(torch.compile(fn, fullgraph=True, backend="aot_eager")(q), q)[0]
    torch.testing.assert_close(got, want)


def test_flex_registered_backward_refuses_with_the_way_to_train():
    from nat.ops import flex

    with pytest.raises(RuntimeError, match=r"call nat.neighborhood_attention \(or a module\)"):
        flex.na_backward(*(None,) * 7, NAParams((3,), (1,), (1,), (False,), 1.0))
