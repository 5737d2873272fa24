"""Same-process A/B of round seventeen's kernel against round sixteen's (commit 03f32ea) inside
NAT-Tiny, with Swin-T as the reference: batch 8, 224 x 224, fused AdamW, 2 threads, R repeats
(default 9) interleaved by nat.bench.harness.measure_group after one warm-up, medians.
OLD=<commit> compares another commit's kernel instead (round nineteen: OLD=c440e72).

Both sources are built with the flags nat.ops.cpu uses (DTYPE=float32: the build that runs
float32 here; DTYPE=bfloat16 under torch.autocast: the native one). The old kernel takes the
full [N, P] rpb index table: an adapter expands the distinct rows the Python layer passes.
MODE=infer times inference passes instead of training steps.

Run from the repository root: ``python docs/benchmarks/zen5-r17-ab-model.py`` (needs git).
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import timm
import torch
from torch.utils import cpp_extension

import nat.models  # noqa: F401  (registers NAT with timm)
from nat.bench.harness import measure_group, pin_malloc
from nat.ops import cpu

pin_malloc()
torch.set_num_threads(2)


OLD = os.environ.get("OLD", "03f32ea")
if not re.fullmatch(r"[0-9a-f]{7,40}", OLD):
    sys.exit(f"{Path(__file__).name}: OLD={OLD!r}; expected a commit hash (7-40 hex digits)")


def old_source() -> bytes:
    """The kernel source at commit OLD (round sixteen's by default), from git (run from the
    repository root)."""
    try:
        return subprocess.check_output(
            ["git", "show", f"{OLD}:src/nat/ops/cpu/na_cpu.cpp"], stderr=subprocess.DEVNULL
        )
    except (OSError, subprocess.CalledProcessError):
        sys.exit(f"{Path(__file__).name}: needs git and this repository's history at commit {OLD}")


torch.manual_seed(0)
SETTINGS = {  # variable: (default, allowed values)
    "MODE": ("train", ("train", "infer")),
    "DTYPE": ("bfloat16", ("float32", "bfloat16")),
    "R": ("9", tuple(str(r) for r in range(1, 1001))),
}
env = {name: os.environ.get(name, default) for name, (default, _) in SETTINGS.items()}
for name, (_, allowed) in SETTINGS.items():
    if env[name] not in allowed:
        shown = "1-1000" if name == "R" else ", ".join(allowed)
        sys.exit(f"{Path(__file__).name}: {name}={env[name]!r}; expected one of {shown}")
R, TRAIN, DTYPE = int(env["R"]), env["MODE"] == "train", getattr(torch, env["DTYPE"])
NARROW = torch.float32 == DTYPE and cpu.narrow_float32()

work = Path(tempfile.gettempdir()) / "nat-r17-ab"  # kept: later runs reuse the builds
work.mkdir(exist_ok=True)
code = old_source()
build = work / f"model-old{'8' if NARROW else ''}"
build.mkdir(exist_ok=True)
if not (build / "old.cpp").is_file() or (build / "old.cpp").read_bytes() != code:
    (build / "old.cpp").write_bytes(code)  # unchanged: keep the build
old = cpp_extension.load(
    name=f"r17_model_old{'8' if NARROW else ''}",
    sources=[str(build / "old.cpp")],
    extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"]
    + (["-DNAT_LANES8"] if NARROW else []),
    extra_ldflags=["-fopenmp"],
    build_directory=str(build),
)


class OldKernel:
    """Round sixteen's entry points behind round seventeen's call signature."""

    @staticmethod
    def _full(bidx, pattern):
        return bidx if pattern is None else bidx[pattern.long()].contiguous()

    def na_forward(self, q, k, v, rpb, nbr, bidx, valid, scale, keep=False, bias_pattern=None):
        return old.na_forward(q, k, v, rpb, nbr, self._full(bidx, bias_pattern), valid, scale, keep)

    def na_backward(self, *args, bias_pattern=None):
        args = list(args)
        if len(args) == 15:  # (..., dqkv, logits, bias_pattern) passed by position
            bias_pattern = args.pop()
        args[8] = self._full(args[8], bias_pattern)
        return old.na_backward(*args)

    def vector_lanes(self):
        return old.vector_lanes()


new_module_for = cpu.module_for
old_kernel = OldKernel()
x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))
names = ("nat_tiny", "swin_tiny_patch4_window7_224")
models = {n: timm.create_model(n).train(TRAIN) for n in names}
opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-6, fused=True) for n, m in models.items()}


def call(name, kernel):
    def run():
        cpu.module_for = new_module_for if kernel == "new" else (lambda dtype: old_kernel)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=torch.bfloat16 == DTYPE):
            if not TRAIN:
                with torch.no_grad():
                    return models[name](x)
            opts[name].zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(models[name](x), y)
        loss.backward()
        opts[name].step()

    return run


calls = {
    "nat_tiny new": call("nat_tiny", "new"),
    "nat_tiny old": call("nat_tiny", "old"),
    "swin_tiny": call(names[1], "new"),
}
res = measure_group(calls, torch.device("cpu"), repeats=R, warmup=1, memory=False)
ms = {k: 1e3 * m.median_s for k, m in res.items()}
print(f"{DTYPE} {'training step' if TRAIN else 'inference pass'}")
for k, m in res.items():
    print(k, round(ms[k]), sorted(round(1e3 * t) for t in m.times_s))
print(
    f"NAT-Tiny / Swin-T speed: new {ms['swin_tiny'] / ms['nat_tiny new']:.3f}, "
    f"old {ms['swin_tiny'] / ms['nat_tiny old']:.3f}; "
    f"new / old time {ms['nat_tiny new'] / ms['nat_tiny old']:.3f}"
)
