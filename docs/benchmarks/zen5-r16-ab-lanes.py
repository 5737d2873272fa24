"""Same-process A/B of round sixteen's change: float32 calls in the 16-lane (native AVX-512)
build against the 8-lane build, switched by NAT_CPU_FLOAT32_LANES. NAT-Tiny in both builds and
Swin-T (the reference), batch 8, fused AdamW, 2 threads, interleaved by
nat.bench.harness.measure_group (R repeats after one warm-up, default 9; medians).
MODE=infer times inference passes (torch.no_grad) instead of training steps."""

import os

import timm
import torch

import nat.models  # noqa: F401  (registers NAT with timm)
from nat.bench.harness import measure_group, pin_malloc
from nat.ops import cpu

pin_malloc()
torch.set_num_threads(2)
torch.manual_seed(0)
R = int(os.environ.get("R", "9"))
TRAIN = os.environ.get("MODE", "train") == "train"
assert cpu.load().vector_lanes() == 16 and cpu.load(narrow=True).vector_lanes() == 8

x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))
names = ("nat_tiny", "swin_tiny_patch4_window7_224")
models = {n: timm.create_model(n).train(TRAIN) for n in names}
opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-6, fused=True) for n, m in models.items()}


def call(name, lanes):
    def run():
        os.environ[cpu.FLOAT32_LANES_VARIABLE] = lanes
        cpu.narrow_float32.cache_clear()
        if not TRAIN:
            with torch.no_grad():
                return models[name](x)
        opts[name].zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(models[name](x), y).backward()
        opts[name].step()

    return run


calls = {
    "nat_tiny 16": call("nat_tiny", "16"),
    "nat_tiny 8": call("nat_tiny", "8"),
    "swin_tiny": call("swin_tiny_patch4_window7_224", "16"),
}
res = measure_group(calls, torch.device("cpu"), repeats=R, warmup=1, memory=False)
ms = {k: 1e3 * m.median_s for k, m in res.items()}
for k, m in res.items():
    print(k, round(ms[k]), sorted(round(1e3 * t) for t in m.times_s))
print(
    f"NAT-Tiny / Swin-T speed: 16 lanes {ms['swin_tiny'] / ms['nat_tiny 16']:.3f}, "
    f"8 lanes {ms['swin_tiny'] / ms['nat_tiny 8']:.3f}; "
    f"8 / 16 time {ms['nat_tiny 8'] / ms['nat_tiny 16']:.3f}"
)
