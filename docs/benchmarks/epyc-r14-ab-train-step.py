"""Same-process A/B of round fourteen's model change: old = the tokenizer's float32 convolutions
on NCHW input (round thirteen), new = on channels-last input (now). NAT-Tiny (new and old) and
Swin-T (unchanged, the reference), batch 8, fused AdamW, 2 threads, interleaved by
nat.bench.harness.measure_group (R repeats after one warm-up, default 9; medians).
MODE=infer times inference passes (torch.no_grad) instead of training steps."""

import os

import timm
import torch

import nat.models.nat as M
from nat.bench.harness import measure_group, pin_malloc

pin_malloc()
torch.set_num_threads(2)
torch.manual_seed(0)
R = int(os.environ.get("R", "9"))
TRAIN = os.environ.get("MODE", "train") == "train"
new_tokenizer = M.ConvTokenizer.forward


def old_tokenizer(self, x):  # round thirteen: float32 convolutions on the input's own layout
    return self.norm(self.proj(x).permute(0, 2, 3, 1))


x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))
names = ("nat_tiny", "swin_tiny_patch4_window7_224")
models = {n: timm.create_model(n).train(TRAIN) for n in names}
opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-6, fused=True) for n, m in models.items()}


def call(name, tokenizer):
    def run():
        M.ConvTokenizer.forward = tokenizer
        if not TRAIN:
            with torch.no_grad():
                return models[name](x)
        opts[name].zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(models[name](x), y).backward()
        opts[name].step()

    return run


calls = {
    "nat_tiny old": call("nat_tiny", old_tokenizer),
    "nat_tiny new": call("nat_tiny", new_tokenizer),
    "swin_tiny": call("swin_tiny_patch4_window7_224", new_tokenizer),
}
res = measure_group(calls, torch.device("cpu"), repeats=R, warmup=1, memory=False)
ms = {k: 1e3 * m.median_s for k, m in res.items()}
for k, m in res.items():
    print(k, round(ms[k]), sorted(round(1e3 * t) for t in m.times_s))
print(
    f"NAT-Tiny / Swin-T speed: old {ms['swin_tiny'] / ms['nat_tiny old']:.3f}, "
    f"new {ms['swin_tiny'] / ms['nat_tiny new']:.3f}; "
    f"new / old time {ms['nat_tiny new'] / ms['nat_tiny old']:.3f}"
)
