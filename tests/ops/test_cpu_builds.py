"""Which build of the fused CPU kernel runs a call, and that the two builds agree.

On AMD CPUs with AVX-512 float32 calls run a second build with 8-lane vectors
(``nat.ops.cpu.narrow_float32``); ``NAT_CPU_FLOAT32_LANES`` overrides the choice.
"""

from __future__ import annotations

import pytest
import torch

import nat
from nat.ops import cpu
from nat.ops.spec import NAParams, neighbor_table

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="the CPU kernel is not built")

NATIVE_LANES = int(cpu.load().vector_lanes()) if cpu.is_available() else 0


@pytest.fixture
def fresh_choice(monkeypatch):
    """narrow_float32 decided again under the test's environment, and again after it."""
    monkeypatch.delenv(cpu.FLOAT32_LANES_VARIABLE, raising=False)
    cpu.narrow_float32.cache_clear()
    yield monkeypatch
    cpu.narrow_float32.cache_clear()


def test_float32_runs_the_narrow_build_exactly_where_chosen():
    narrow = cpu.narrow_float32()
    assert cpu.lanes_for(torch.float32) == cpu.vector_lanes() == (8 if narrow else NATIVE_LANES)
    assert cpu.module_for(torch.bfloat16) is cpu.module_for(torch.float16) is cpu.load()
    assert (cpu.module_for(torch.float32) is cpu.load()) == (not narrow)
    if NATIVE_LANES == 8:
        assert not narrow  # nothing narrower to build


def test_amd_cpus_with_avx512_choose_the_narrow_build(fresh_choice):
    fresh_choice.setattr(cpu, "_cpu_vendor", lambda: "AuthenticAMD")
    assert cpu.narrow_float32() == (NATIVE_LANES == 16)
    cpu.narrow_float32.cache_clear()
    fresh_choice.setattr(cpu, "_cpu_vendor", lambda: "GenuineIntel")
    assert not cpu.narrow_float32()


@pytest.mark.parametrize(("value", "narrow"), [("8", NATIVE_LANES == 16), ("16", False)])
def test_the_environment_overrides_the_choice(fresh_choice, value, narrow):
    fresh_choice.setenv(cpu.FLOAT32_LANES_VARIABLE, value)
    fresh_choice.setattr(cpu, "_cpu_vendor", lambda: "AuthenticAMD")
    assert cpu.narrow_float32() == narrow
    assert (cpu.module_for(torch.float32) is cpu.load()) == (not narrow)


def test_a_bad_setting_names_the_variable_its_value_and_the_rule(fresh_choice):
    fresh_choice.setenv(cpu.FLOAT32_LANES_VARIABLE, "32")
    with pytest.raises(ValueError, match=r"NAT_CPU_FLOAT32_LANES='32'; expected 8, 16 or unset"):
        cpu.narrow_float32()
    with pytest.raises(ValueError, match=r"NAT_CPU_FLOAT32_LANES='32'"):
        cpu.is_available()  # refused before any backend is chosen


@pytest.mark.skipif(NATIVE_LANES != 16, reason="no AVX-512: one build only")
def test_the_narrow_build_matches_the_native_one_in_float32():
    """Outputs, log-sum-exp and all four gradients (plain and packed) agree to rounding, with and
    without kept logits."""
    native, narrow = cpu.load(), cpu.load(narrow=True)
    assert int(narrow.vector_lanes()) == 8
    g = torch.Generator().manual_seed(0)
    for spatial, kernel, dilation, causal in [
        ((13, 14), (7, 7), (1, 2), (False, False)),
        ((7, 8), (3, 3), (1, 1), (True, False)),
    ]:
        params = NAParams(kernel, (1, 1), dilation, causal, 32**-0.5)
        nbr, valid, bidx = neighbor_table(spatial, params, torch.device("cpu"))
        n = nbr.shape[0]
        q, k, v = (torch.randn(2, n, 2, 32, generator=g) for _ in "qkv")
        rpb = torch.randn(2, (2 * kernel[0] - 1) * (2 * kernel[1] - 1), generator=g)
        tables = (nbr, bidx, valid)
        want = native.na_forward(q, k, v, rpb, *tables, params.scale)
        got = narrow.na_forward(q, k, v, rpb, *tables, params.scale, True)
        grad = torch.randn(want[0].shape, generator=g)
        args = (grad, q, k, v, rpb, want[0], want[1], *tables, None, params.scale)
        want_grads = native.na_backward(*args, None)
        got_grads = narrow.na_backward(*args, None, got[2])
        packed = torch.empty(2, n, 3, 2, 32)
        packed_rpb = narrow.na_backward(*args, packed, got[2])[3]
        close = dict(rtol=2e-5, atol=2e-5)
        for w, o in zip([*want[:2], *want_grads], [*got[:2], *got_grads], strict=True):
            torch.testing.assert_close(o, w, **close)
        for w, o in zip(want_grads[:3], packed.unbind(2), strict=True):  # head-major vs packed
            torch.testing.assert_close(o.transpose(1, 2), w, **close)
        torch.testing.assert_close(packed_rpb, want_grads[3], **close)


def test_a_model_gives_the_same_float32_logits_through_either_build(fresh_choice):
    """NAT in float32, forward and backward, through the build each setting picks."""
    torch.manual_seed(0)
    layer = nat.NeighborhoodAttention2D(64, 2, 7)
    x = torch.randn(2, 14, 14, 64, requires_grad=True)
    results = []
    for value in ("16", "8"):
        fresh_choice.setenv(cpu.FLOAT32_LANES_VARIABLE, value)
        cpu.narrow_float32.cache_clear()
        out = layer(x)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        results.append((out, grad))
    (out16, grad16), (out8, grad8) = results
    torch.testing.assert_close(out8, out16, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad8, grad16, rtol=1e-4, atol=1e-4)
