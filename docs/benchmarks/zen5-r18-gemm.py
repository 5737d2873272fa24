"""The float32 products of NAT-Tiny's linears at batch 8 (tokens x in -> out), forward and both
gradients, in MKL (torch's ``F.linear`` / ``@``) and in oneDNN (``nat::linear`` and
``nat::linear_weight_grad``): 2 threads, medians of R calls (default 15) after two, in ms.

Run from the repository root: ``python docs/benchmarks/zen5-r18-gemm.py``.
"""

import os
import sys
import time
from pathlib import Path

import torch

import nat.nn.linear  # noqa: F401  (registers nat::linear)

torch.set_num_threads(2)
r = os.environ.get("R", "15")
if not r.isdigit() or not 1 <= int(r) <= 1000:
    sys.exit(f"{Path(__file__).name}: R={r!r}; expected 1-1000")
R = int(r)


def median_ms(f):
    f(), f()
    times = []
    for _ in range(R):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[R // 2]


# (tokens, in, out) of qkv, proj, fc1, fc2 at the four levels (mlp ratio 3).
SHAPES = [
    (8 * s * s, c, o) for s, c in ((56, 64), (28, 128), (14, 256), (7, 512)) for o in (3 * c, c)
] + [(8 * s * s, c * 3, c) for s, c in ((56, 64), (28, 128), (14, 256), (7, 512))]
linear, weight_grad = torch.ops.nat.linear, torch.ops.nat.linear_weight_grad


def row(m, k, n):
    x, w, b, g = torch.randn(m, k), torch.randn(n, k), torch.randn(n), torch.randn(m, n)
    return [
        median_ms(lambda: torch.nn.functional.linear(x, w, b)),
        median_ms(lambda: linear(x, w, b)),
        median_ms(lambda: g @ w),
        median_ms(lambda: linear(g, w.t(), None)),
        median_ms(lambda: g.t() @ x),
        median_ms(lambda: weight_grad(g, x)),
    ]


print("tokens in out | forward mkl onednn | input grad mkl onednn | weight grad mkl onednn")
for m, k, n in sorted(set(SHAPES)):
    print(m, k, n, "|", " ".join(f"{t:.2f}" for t in row(m, k, n)))
