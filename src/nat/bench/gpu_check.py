"""One command for a GPU machine: check the CUDA backends against the reference, then benchmark.

``python -m nat.bench.gpu_check --out DIR`` (on a machine with a CUDA device):

1. correctness: every CUDA backend (``triton``, ``flex``, ``torch``) against the float64
   reference on the CPU, forward, log-sum-exp and gradients, over problems covering 1-D/2-D/3-D,
   RPB, dilation, stride, causal, even kernels, grouped-query heads, a value head_dim unlike the
   query's and head_dim 128, in float32, bfloat16 and float16; and a NAT module compiled with
   ``torch.compile(fullgraph=True)``;
2. ``nat bench ops`` on the GPU shapes (:data:`nat.bench.ops.CUDA_SHAPES`), bfloat16: every
   backend, dense SDPA, Swin WSA, unfold-NA and NATTEN when importable, with TFLOP/s, the ratio to
   SDPA's, the max error and the GPU targets;
3. ``nat bench models``: NAT-Tiny against Swin-T, bfloat16, training step and inference at
   batch 64, once with the default backend (``triton``) and once with the composite ``torch``.

Everything is written to ``DIR`` as JSON (``correctness.json``, ``ops.json``, ``models.json``,
``models-torch-backend.json``) and printed as tables.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import available_backends, neighborhood_attention, use_backend
from ..files import write_json
from . import models as bench_models
from . import ops
from .report import format_result

__all__ = ["PROBLEMS", "CheckProblem", "check_correctness", "main"]


@dataclass(frozen=True)
class CheckProblem:
    """One correctness case: ``[batch, *spatial, heads, head_dim]`` and a window."""

    name: str
    spatial: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    is_causal: tuple[bool, ...] = ()
    heads: int = 4
    heads_kv: int = 4
    head_dim: int = 32
    head_dim_v: int = 32
    rpb: bool = False
    batch: int = 2

    def window(self) -> dict:
        ndim = len(self.spatial)
        return dict(
            kernel_size=self.kernel_size,
            stride=self.stride or (1,) * ndim,
            dilation=self.dilation or (1,) * ndim,
            is_causal=self.is_causal or (False,) * ndim,
        )

    def tensors(self) -> list[torch.Tensor | None]:
        g = torch.Generator().manual_seed(0)
        size = (self.batch, *self.spatial)
        q = torch.randn(*size, self.heads, self.head_dim, generator=g, dtype=torch.float64)
        k = torch.randn(*size, self.heads_kv, self.head_dim, generator=g, dtype=torch.float64)
        v = torch.randn(*size, self.heads_kv, self.head_dim_v, generator=g, dtype=torch.float64)
        span = tuple(2 * k - 1 for k in self.kernel_size)
        rpb = torch.randn(self.heads, *span, generator=g, dtype=torch.float64) if self.rpb else None
        return [q, k, v, rpb]


PROBLEMS = (
    CheckProblem("1d-rpb", (200,), (13,), rpb=True),
    CheckProblem("1d-causal-stride-even", (150,), (8,), stride=(3,), is_causal=(True,)),
    CheckProblem("2d-nat-level", (28, 28), (7, 7), rpb=True),
    CheckProblem("2d-dilated-rpb", (40, 36), (7, 7), dilation=(3, 4), rpb=True),
    CheckProblem("2d-even-stride", (33, 30), (6, 4), stride=(2, 4), dilation=(1, 2)),
    CheckProblem("2d-causal", (24, 24), (5, 5), is_causal=(True, False)),
    CheckProblem("2d-gqa-dv", (20, 20), (5, 5), heads=8, heads_kv=2, head_dim_v=16, rpb=True),
    CheckProblem("2d-hd128", (16, 16), (5, 5), head_dim=128, head_dim_v=128, heads=2, heads_kv=2),
    CheckProblem("3d-rpb", (8, 12, 12), (3, 5, 5), rpb=True),
    CheckProblem(
        "3d-dilated-causal", (10, 12, 12), (4, 3, 3), dilation=(1, 2, 3), is_causal=(True,) * 3
    ),
)
"""The correctness cases: every feature of the operator, at sizes a GPU checks in seconds."""

TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
"""Largest error (outputs and gradients divided by the reference's largest magnitude)."""


def _run(problem: CheckProblem, backend: str, device: str, dtype: torch.dtype) -> list:
    leaves = [
        None if t is None else t.to(device, dtype).requires_grad_() for t in problem.tensors()
    ]
    q, k, v, rpb = leaves
    out, lse = neighborhood_attention(
        q, k, v, rpb=rpb, backend=backend, return_lse=True, **problem.window()
    )
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device, out.dtype)
    grad_lse = torch.randn(lse.shape, generator=g, dtype=torch.float64).to(device, lse.dtype)
    inputs = [t for t in leaves if t is not None]
    grads = torch.autograd.grad((out * grad_out).sum() + (lse * grad_lse).sum(), inputs)
    return [t.detach().cpu().double() for t in (out, lse, *grads)]


def check_correctness(
    device: str,
    backends: list[str],
    dtypes: tuple[torch.dtype, ...] = tuple(TOLERANCE),
    problems: tuple[CheckProblem, ...] = PROBLEMS,
) -> list[dict]:
    """One row per (problem, backend, dtype): the largest relative error of the output,
    log-sum-exp and gradients against the float64 reference on the CPU, and whether it passes."""
    rows = []
    for problem in problems:
        expected = _run(problem, "reference", "cpu", torch.float64)
        for backend in backends:
            for dtype in dtypes:
                row = {"problem": problem.name, "backend": backend, "dtype": str(dtype)[6:]}
                try:
                    got = _run(problem, backend, device, dtype)
                except (RuntimeError, ValueError) as err:
                    rows.append({**row, "error": str(err).splitlines()[0], "passed": False})
                    continue
                worst = max(
                    ((a - e).abs().max() / e.abs().max().clamp_min(1)).item()
                    for a, e in zip(got, expected, strict=True)
                )
                passed = worst <= TOLERANCE[dtype]
                rows.append({**row, "max_rel_error": worst, "passed": passed})
    return rows


def check_compiled_module(device: str) -> dict:
    """A NAT attention module under ``torch.compile(fullgraph=True)`` against eager mode."""
    from ..nn import NeighborhoodAttention2D

    torch.manual_seed(0)
    module = NeighborhoodAttention2D(64, 2, 7, dilation=2).to(device)
    x = torch.randn(2, 30, 27, 64, device=device, requires_grad=True)
    expected = module(x)
    out = torch.compile(module, fullgraph=True)(x)
    error = (out - expected).abs().max().item()
    out.sum().backward()
    return {"check": "compiled module", "max_abs_error": error, "passed": error < 1e-4}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nat.bench.gpu_check", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="directory for the JSON results")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per call")
    parser.add_argument("--skip-models", action="store_true", help="skip the model benchmark")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device is available", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    backends = [b for b in available_backends("cuda") if b != "reference"]
    rows = check_correctness("cuda", backends)
    compiled = check_compiled_module("cuda")
    write_json(args.out / "correctness.json", {"rows": rows, "compiled": compiled})
    for row in rows:
        detail = row.get("error") or f"{row['max_rel_error']:.2e}"
        status = "ok  " if row["passed"] else "FAIL"
        print(f"{status} {row['problem']} {row['backend']} {row['dtype']}: {detail}")
    print(f"{'ok  ' if compiled['passed'] else 'FAIL'} compiled module: {compiled}")

    result = ops.run_ops(ops.CUDA_SHAPES, "cuda", torch.bfloat16, repeats=args.repeats)
    write_json(args.out / "ops.json", result)
    print(format_result(result))
    if not args.skip_models:
        names = ["nat_tiny", bench_models.BASELINE_MODEL]
        common = dict(device="cuda", dtypes=(torch.bfloat16,), batch_sizes=(64,), train_batch=64)
        result = bench_models.run_models(names, repeats=args.repeats, **common)
        write_json(args.out / "models.json", result)
        print(format_result(result))
        with use_backend("torch"):
            result = bench_models.run_models(names, repeats=args.repeats, **common)
        write_json(args.out / "models-torch-backend.json", result)
        print(format_result(result))
    failed = sum(not r["passed"] for r in rows) + (not compiled["passed"])
    print(f"correctness: {len(rows) + 1 - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
