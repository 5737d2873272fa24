"""Same-process A/B of the float32 CPU linear: NAT-Tiny and Swin-T, each with its linears in the
BLAS (MKL: ``NAT_CPU_LINEAR=blas``, and timm's own ``nn.Linear``) and in oneDNN (``onednn``;
Swin-T through ``nat.nn.use_nat_linear``). Batch 8, 224 x 224, float32, 2 threads, fused AdamW,
R repeats (default 9) interleaved by nat.bench.harness.measure_group after one warm-up, medians.
MODE=infer times inference passes instead of training steps.

Run from the repository root: ``python docs/benchmarks/zen5-r18-ab-linear.py``.
"""

import os
import sys
from pathlib import Path

import timm
import torch

import nat.models  # noqa: F401  (registers NAT with timm)
from nat.bench.harness import measure_group, pin_malloc
from nat.nn import set_cpu_linear_backend, use_nat_linear

pin_malloc()
torch.set_num_threads(2)
SETTINGS = {  # variable: (default, allowed values)
    "MODE": ("train", ("train", "infer")),
    "R": ("9", tuple(str(r) for r in range(1, 1001))),
}
env = {name: os.environ.get(name, default) for name, (default, _) in SETTINGS.items()}
for name, (_, allowed) in SETTINGS.items():
    if env[name] not in allowed:
        shown = "1-1000" if name == "R" else ", ".join(allowed)
        sys.exit(f"{Path(__file__).name}: {name}={env[name]!r}; expected one of {shown}")
R, TRAIN = int(env["R"]), env["MODE"] == "train"

torch.manual_seed(0)
x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))
swin = "swin_tiny_patch4_window7_224"
models = {
    "nat_tiny": timm.create_model("nat_tiny"),
    "swin_tiny": timm.create_model(swin),
    "swin_tiny nat-linear": use_nat_linear(timm.create_model(swin)),
}
for m in models.values():
    m.train(TRAIN)
opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-6, fused=True) for n, m in models.items()}


def call(name, backend):
    def run():
        set_cpu_linear_backend(backend)
        if not TRAIN:
            with torch.no_grad():
                return models[name](x)
        opts[name].zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(models[name](x), y).backward()
        opts[name].step()

    return run


calls = {
    "nat_tiny blas": call("nat_tiny", "blas"),
    "nat_tiny onednn": call("nat_tiny", "onednn"),
    "swin_tiny blas": call("swin_tiny", "blas"),
    "swin_tiny onednn": call("swin_tiny nat-linear", "onednn"),
}
res = measure_group(calls, torch.device("cpu"), repeats=R, warmup=1, memory=False)
ms = {k: 1e3 * m.median_s for k, m in res.items()}
print(f"float32 {'training step' if TRAIN else 'inference pass'}, ms (median; sorted times)")
for k, m in res.items():
    print(k, round(ms[k]), sorted(round(1e3 * t) for t in m.times_s))
for model in ("nat_tiny", "swin_tiny"):
    print(f"{model} onednn / blas time: {ms[f'{model} onednn'] / ms[f'{model} blas']:.3f}")
for a in ("blas", "onednn"):
    print(f"NAT-Tiny {a} / Swin-T blas speed: {ms['swin_tiny blas'] / ms[f'nat_tiny {a}']:.3f}")
print(f"like for like (both onednn): {ms['swin_tiny onednn'] / ms['nat_tiny onednn']:.3f}")
