"""The fused CPU kernel's entry points refuse every input whose layout they do not assume.

The Python backend hands the kernel what it expects; these checks are the kernel's own, so a
caller that gets it wrong meets an error instead of reading outside a tensor.
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from nat.ops import cpu
from nat.ops.spec import NAParams, neighbor_table

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="the CPU kernel is not built")

B, SPATIAL, H, D = 2, (5, 6), 2, 4
N = SPATIAL[0] * SPATIAL[1]
PARAMS = NAParams((3, 3), (1, 1), (1, 1), (False, False), 0.5)


def forward_args() -> dict:
    g = torch.Generator().manual_seed(0)
    nbr, valid, bidx = neighbor_table(SPATIAL, PARAMS, torch.device("cpu"))
    return {
        "q": torch.randn(B, N, H, D, generator=g),
        "k": torch.randn(B, N, H, D, generator=g),
        "v": torch.randn(B, N, H, D, generator=g),
        "rpb": torch.randn(H, 25, generator=g),
        "nbr": nbr,
        "bidx": bidx,
        "valid": valid,
        "scale": PARAMS.scale,
    }


def backward_args() -> dict:
    args = forward_args()
    out, lse, _ = cpu.load().na_forward(*args.values())
    q, k, v, rpb, nbr, bidx, valid, scale = args.values()
    grad_out = torch.randn_like(out)
    return dict(
        dout=grad_out, q=q, k=k, v=v, rpb=rpb, out=out, lse=lse, nbr=nbr, bidx=bidx, valid=valid
    ) | {"dlse": torch.randn_like(lse), "scale": scale, "dqkv": None, "logits": None}


def test_valid_arguments_run():
    args = forward_args()
    out, lse, _ = cpu.load().na_forward(*args.values())
    assert out.shape == (B, N, H, D) and lse.shape == (B, H, N)
    dq, dk, dv, drpb = cpu.load().na_backward(*backward_args().values())
    assert dq.shape == dk.shape == dv.shape == (B, H, N, D) and drpb.shape == (H, 25)


FORWARD_CASES = {
    "query of another rank": ("q", lambda t: t[0], r"query has shape \[30, 2, 4\]"),
    "key of another length": ("k", lambda t: t[:, :-1], r"key has shape \[2, 29, 2, 4\]"),
    "value of another dtype": ("v", lambda t: t.double(), r"value has dtype Double"),
    "query on another device": ("q", lambda t: t.to("meta"), r"query is on meta"),
    "strided head_dim": (
        "k",
        lambda t: torch.randn(B, N, H, 2 * D)[..., ::2],
        r"key has strides .* contiguous last \(head_dim\) axis",
    ),
    "rpb expanded over heads": (
        "rpb",
        lambda t: t[:1].expand(H, -1),
        r"rpb has strides \[0, 1\]; expected contiguous",
    ),
    "rpb transposed": ("rpb", lambda t: t.t().contiguous().t(), r"rpb has strides \[1, 2\]"),
    "rpb for other heads": ("rpb", lambda t: torch.zeros(H + 1, 25), r"rpb has shape \[3, 25\]"),
    "rpb of another dtype": ("rpb", lambda t: t.half(), r"rpb has dtype Half"),
    "neighbour beyond the input": (
        "nbr",
        lambda t: torch.where(t == t.max(), N, t),
        rf"nbr has entries in \[0, {N}\]; they must lie in \[0, {N}\)",
    ),
    "negative neighbour": ("nbr", lambda t: t - 1, r"nbr has entries in \[-1, "),
    "neighbour table of int64": ("nbr", lambda t: t.long(), r"nbr has dtype Long"),
    "neighbour table transposed": (
        "nbr",
        lambda t: t.t().contiguous().t(),
        r"nbr has strides .* expected contiguous",
    ),
    "bias index beyond rpb": ("bidx", lambda t: t + 1, r"bidx has entries in \[1, 25\]"),
    "valid of the wrong size": (
        "valid",
        lambda t: torch.ones(N, 8, dtype=torch.bool),
        r"valid has shape \[30, 8\]",
    ),
}


@pytest.mark.parametrize(("name", "change", "message"), FORWARD_CASES.values(), ids=FORWARD_CASES)
def test_forward_refuses(name, change, message):
    args = forward_args()
    args[name] = change(args[name])
    with pytest.raises(RuntimeError, match=message):
        cpu.load().na_forward(*args.values())


BACKWARD_CASES = {
    "grad_out transposed": (
        "dout",
        lambda t: t.transpose(1, 2).contiguous().transpose(1, 2),
        r"grad_out has strides .* expected contiguous",
    ),
    "out of another head_dim": ("out", lambda t: t[..., :-1], r"out has shape \[2, 30, 2, 3\]"),
    "lse in float16": ("lse", lambda t: t.half(), r"lse has dtype Half"),
    "lse transposed": (
        "lse",
        lambda t: t.transpose(1, 2).contiguous().transpose(1, 2),
        r"lse has strides",
    ),
    "rpb expanded over heads": ("rpb", lambda t: t[:1].expand(H, -1), r"rpb has strides \[0, 1\]"),
    "neighbour beyond the input": ("nbr", lambda t: t + 1, r"nbr has entries in \[1, 30\]"),
    "dlse in float64": ("dlse", lambda t: t.double(), r"dlse has dtype Double"),
    "dlse transposed": (
        "dlse",
        lambda t: t.transpose(1, 2).contiguous().transpose(1, 2),
        r"dlse has strides",
    ),
    "logits for another window": (
        "logits",
        lambda t: torch.zeros(B, H, N, 3),
        r"logits has shape \[2, 2, 30, 3\]",
    ),
    "key heads not dividing query heads": (
        "k",
        lambda t: torch.randn(B, N, 3, D),
        r"key has 3 heads; query's 2 heads must be a multiple of it",
    ),
}


@pytest.mark.parametrize(("name", "change", "message"), BACKWARD_CASES.values(), ids=BACKWARD_CASES)
def test_backward_refuses(name, change, message):
    args = backward_args()
    args[name] = change(args[name])
    with pytest.raises(RuntimeError, match=message):
        cpu.load().na_backward(*args.values())


@pytest.mark.skipif(platform.machine() != "x86_64", reason="reads x86 CPU flags")
def test_native_build_uses_16_lanes_exactly_where_the_cpu_has_avx512():
    """-march=native: 16-lane vectors with AVX-512 (F, BW, VL), 8-lane ones (AVX2) otherwise."""
    flags = next(
        line.split(":", 1)[1].split()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("flags")
    )
    avx512 = {"avx512f", "avx512bw", "avx512vl"} <= set(flags)
    assert cpu.load().vector_lanes() == (16 if avx512 else 8)
