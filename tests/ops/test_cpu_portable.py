"""The fused CPU kernel built for other x86 CPUs computes what this machine's build does.

The kernel is compiled with ``-march=native``. On AVX-512 machines its vector path works on
16-lane vectors and uses AVX-512 intrinsics (masked loads, gathers, vdpbf16ps); elsewhere it works
on 8-lane vectors, with AVX2 and F16C intrinsics where the CPU has them and portable vector code
where it does not. This builds the same source for x86-64-v3 (AVX2, no AVX-512) and for the
baseline x86-64 (SSE2 only), and compares each with this machine's build on causal, dilated and
grouped-query windows, in every dtype of the vector path. (About a minute each: ``-m slow``.)
"""

from __future__ import annotations

import itertools
import platform

import pytest
import torch

from nat.ops import cpu
from nat.ops.spec import NAParams, neighbor_table

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not cpu.is_available(), reason="the CPU kernel is not built"),
    pytest.mark.skipif(platform.machine() != "x86_64", reason="builds for x86-64-v3"),
]

WINDOWS = [
    ((9, 11), (3, 3), (1, 1), (False, False)),
    ((13, 14), (7, 7), (1, 2), (False, False)),
    ((10, 9), (5, 3), (2, 1), (True, False)),
    ((15, 15), (13, 13), (1, 1), (False, False)),
]


@pytest.fixture(scope="module", params=["x86-64-v3", "x86-64"])
def portable(request, tmp_path_factory):
    from torch.utils import cpp_extension

    name = "nat_cpu_" + request.param.replace("-", "_")
    build = tmp_path_factory.mktemp(name)
    module = cpp_extension.load(
        name=name,
        sources=[str(cpu._SOURCE)],
        extra_cflags=["-O3", f"-march={request.param}", "-fopenmp", "-ffp-contract=fast"],
        extra_ldflags=["-fopenmp"],
        build_directory=str(build),
    )
    return module


def test_builds_without_avx512_use_8_lane_vectors(portable):
    assert portable.vector_lanes() == 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_portable_build_matches_native_build(portable, dtype):
    g = torch.Generator().manual_seed(0)
    native = cpu.load()
    tol = {torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    for (shape, kernel, dilation, causal), head_dim, heads_kv in itertools.product(
        WINDOWS, [16, 32, 64], [2, 1]
    ):
        params = NAParams(kernel, (1, 1), dilation, causal, head_dim**-0.5)
        nbr, valid, bidx = neighbor_table(shape, params, torch.device("cpu"))
        n = shape[0] * shape[1]
        q = torch.randn(2, n, 2, head_dim, generator=g).to(dtype)
        k, v = (torch.randn(2, n, heads_kv, head_dim, generator=g).to(dtype) for _ in range(2))
        rpb = torch.randn(2, (2 * kernel[0] - 1) * (2 * kernel[1] - 1), generator=g).to(dtype)
        tables = (nbr, bidx, valid)
        want = native.na_forward(q, k, v, rpb, *tables, params.scale)
        got = portable.na_forward(q, k, v, rpb, *tables, params.scale)
        grad = torch.randn(want[0].shape, generator=g).to(dtype)
        args = (grad, q, k, v, rpb, want[0], want[1], *tables, None, params.scale)
        want_grads = native.na_backward(*args, None)
        got_grads = portable.na_backward(*args, None)
        if heads_kv == 2:  # the packed q/k/v gradient, written in place
            want_packed, got_packed = (torch.empty(2, n, 3, 2, head_dim, dtype=dtype) for _ in "wg")
            native.na_backward(*args, want_packed)
            portable.na_backward(*args, got_packed)
            want_grads, got_grads = [*want_grads, want_packed], [*got_grads, got_packed]
        for w, o in zip([*want[:2], *want_grads], [*got[:2], *got_grads], strict=True):
            scale = w.float().abs().max().clamp_min(1)
            torch.testing.assert_close(o.float() / scale, w.float() / scale, rtol=tol, atol=tol)
