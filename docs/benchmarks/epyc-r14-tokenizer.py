"""Round fourteen's tokenizer A/B: NAT's convolutional tokenizer (two 3x3 stride-2 convolutions,
then the LayerNorm) on float32 input in NCHW (the layout before) and channels-last (now), one
process, interleaved by nat.bench.harness.measure_group (25 repeats after 5 warm-ups; medians).
Usage: python epyc-r14-tokenizer.py THREADS BATCH SIZE MODEL (round fourteen: 2 8 224 nat_tiny,
and 1 32 32 nat_digits, the digits recipe's step)."""

import sys

import timm
import torch

import nat.models  # noqa: F401  (registers the models)
from nat.bench.harness import measure_group

threads, batch, size, name = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
torch.manual_seed(0)
tok = timm.create_model(name, num_classes=10).patch_embed
x = torch.randn(batch, 3, size, size)
layouts = {"nchw": x, "channels_last": x.contiguous(memory_format=torch.channels_last)}


def call(layout, train):
    def run():
        with torch.set_grad_enabled(train):
            out = tok.norm(tok.proj(layouts[layout]).permute(0, 2, 3, 1))  # the module's arithmetic
            if train:
                tok.zero_grad()
                out.sum().backward()

    return run


for train in (False, True):
    calls = {k: call(k, train) for k in layouts}
    res = measure_group(calls, torch.device("cpu"), repeats=25, warmup=5, memory=False)
    line = "  ".join(f"{k} {1e3 * m.median_s:.2f} ms" for k, m in res.items())
    print("train" if train else "infer", line)
