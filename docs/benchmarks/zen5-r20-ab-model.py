"""Same-process A/B of round twenty's bfloat16 changes inside NAT-Tiny, with Swin-T as the
reference: batch 8, 224 x 224, CPU autocast to bfloat16, fused AdamW, 2 threads, R repeats
(default 15) interleaved by nat.bench.harness.measure_group after one warm-up, medians.

"old" runs NAT-Tiny as before the round (one model, switched call by call): its convolutions as
nn.Conv2d's (autocast's contiguous bf16 weight), the bf16 weight gradient's orientation by N and
K alone, and its layer norms as nn.LayerNorm's (ATen's bf16 kernel). "new" is this round's code.
MODE=infer times inference passes instead of training steps.

Run from the repository root: ``python docs/benchmarks/zen5-r20-ab-model.py``.
"""

import os
import statistics
import sys
from pathlib import Path

import timm
import torch
from torch import nn

import nat.models
import nat.models.nat as nat_model
import nat.nn.linear as nat_linear
import nat.nn.norm as nat_norm
from nat.bench.harness import measure_group, pin_malloc

pin_malloc()
torch.set_num_threads(2)
SETTINGS = {  # variable: (default, allowed values)
    "MODE": ("train", ("train", "infer")),
    "R": ("15", tuple(str(r) for r in range(1, 1001))),
}
env = {name: os.environ.get(name, default) for name, (default, _) in SETTINGS.items()}
for name, (_, allowed) in SETTINGS.items():
    if env[name] not in allowed:
        shown = "1-1000" if name == "R" else ", ".join(allowed)
        sys.exit(f"{Path(__file__).name}: {name}={env[name]!r}; expected one of {shown}")
R, TRAIN = int(env["R"]), env["MODE"] == "train"

NEW = {
    "conv": nat_model._Conv2d.forward,
    "rows": nat_linear._MANY_ROWS,
    "norm": nat_norm.LayerNorm.forward,
}
OLD = {"conv": nn.Conv2d.forward, "rows": 0, "norm": nn.LayerNorm.forward}


def use(code: dict) -> None:
    nat_model._Conv2d.forward = code["conv"]
    nat_linear._MANY_ROWS = code["rows"]
    nat_norm.LayerNorm.forward = code["norm"]


torch.manual_seed(0)
x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))
models = {
    "nat_tiny": timm.create_model("nat_tiny"),
    "swin_tiny": timm.create_model("swin_tiny_patch4_window7_224"),
}
for m in models.values():
    m.train(TRAIN)
opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-6, fused=True) for n, m in models.items()}


def call(name: str, code: dict):
    def run():
        use(code)
        with torch.autocast("cpu", torch.bfloat16):
            if not TRAIN:
                with torch.no_grad():
                    return models[name](x)
            opts[name].zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(models[name](x), y)
        loss.backward()
        opts[name].step()

    return run


calls = {
    "nat_tiny old": call("nat_tiny", OLD),
    "nat_tiny new": call("nat_tiny", NEW),
    "swin_tiny": call("swin_tiny", NEW),
}
res = measure_group(calls, torch.device("cpu"), repeats=R, warmup=1, memory=False)
ms = {k: 1e3 * statistics.median(m.times_s) for k, m in res.items()}
print(f"bfloat16 {'training step' if TRAIN else 'inference pass'}, ms (median; sorted times)")
for k, m in res.items():
    print(k, round(ms[k], 1), sorted(round(1e3 * t) for t in m.times_s))
print(f"NAT-Tiny new / old time: {ms['nat_tiny new'] / ms['nat_tiny old']:.3f}")
for v in ("old", "new"):
    print(f"NAT-Tiny {v} / Swin-T speed: {ms['swin_tiny'] / ms[f'nat_tiny {v}']:.3f}")
