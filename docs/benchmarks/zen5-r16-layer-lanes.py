"""Round sixteen: NAT-Tiny's NA forward (batch 8, float32, no grad) at levels 1-3 in the 16-lane
and the 8-lane build (NAT_CPU_FLOAT32_LANES), interleaved, 27 repeats after 3, medians in ms:
"alone", the op called again and again on one packed qkv tensor; "after qkv", the op right after
the layer's qkv projection made its input, as in the model."""

import os
import statistics
import time

import torch

import nat
from nat.ops import cpu
from nat.ops.dispatch import na_packed_op

torch.set_num_threads(2)
torch.manual_seed(0)
for level, (dim, heads, size) in enumerate([(64, 2, 56), (128, 4, 28), (256, 8, 14)], 1):
    layer = nat.NeighborhoodAttention2D(dim, heads, 7).eval()
    x = torch.randn(8, size, size, dim)
    fixed = layer.qkv(x).unflatten(-1, (3, heads, dim // heads))
    times = {}
    for i in range(30):
        for lanes in ("16", "8"):
            os.environ[cpu.FLOAT32_LANES_VARIABLE] = lanes
            cpu.narrow_float32.cache_clear()
            with torch.no_grad():
                t0 = time.perf_counter()
                na_packed_op(fixed, layer.rpb, layer._params, "cpu")
                t1 = time.perf_counter()
                qkv = layer.qkv(x).unflatten(-1, (3, heads, dim // heads))
                t2 = time.perf_counter()
                na_packed_op(qkv, layer.rpb, layer._params, "cpu")
                t3 = time.perf_counter()
            if i >= 3:
                times.setdefault(f"{lanes} lanes alone", []).append(t1 - t0)
                times.setdefault(f"{lanes} lanes after qkv", []).append(t3 - t2)
    print(f"level {level}:", {k: round(1e3 * statistics.median(v), 2) for k, v in times.items()})
