"""Same-process A/B of round seventeen's kernel against round sixteen's (commit 03f32ea).
OLD=<commit> compares another commit's kernel instead (round nineteen: OLD=c440e72).

Builds both sources with the flags nat.ops.cpu uses (the native build and, with NARROW=1, the
8-lane one), then times each entry point at NAT-Tiny's four levels (batch 8, head_dim 32, 7 x 7
windows with rpb, q/k/v slices of a packed qkv, 2 threads): the forward (MODE=fwd) or the packed
backward reading kept logits (MODE=bwd), old and new interleaved call by call, R calls each
(default 15; medians). COLD=1 sweeps 64 MiB through the caches before every call. Prints the
largest difference of the new results from the old, relative to the old's largest magnitude.

Run from the repository root: ``python docs/benchmarks/zen5-r17-ab-kernel.py`` (needs git).
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils import cpp_extension

from nat.ops.cpu import _tables
from nat.ops.spec import NAParams, neighbor_table

SETTINGS = {  # variable: (default, allowed values)
    "MODE": ("bwd", ("fwd", "bwd")),
    "NARROW": ("0", ("0", "1")),
    "COLD": ("0", ("0", "1")),
    "DTYPE": ("bfloat16", ("float32", "bfloat16", "float16")),
    "R": ("15", tuple(str(r) for r in range(1, 1001))),
}
env = {name: os.environ.get(name, default) for name, (default, _) in SETTINGS.items()}
for name, (_, allowed) in SETTINGS.items():
    if env[name] not in allowed:
        shown = "1-1000" if name == "R" else ", ".join(allowed)
        sys.exit(f"{Path(__file__).name}: {name}={env[name]!r}; expected one of {shown}")
MODE, NARROW, COLD = env["MODE"], env["NARROW"] == "1", env["COLD"] == "1"
R, DTYPE = int(env["R"]), getattr(torch, env["DTYPE"])
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


work = Path(tempfile.gettempdir()) / "nat-r17-ab"  # kept: later runs reuse the builds
work.mkdir(exist_ok=True)


def write(path: Path, code: bytes) -> None:
    if not path.is_file() or path.read_bytes() != code:  # unchanged: keep the build
        path.write_bytes(code)


def build_dir(name: str) -> str:
    (work / name).mkdir(exist_ok=True)
    return str(work / name)


write(work / "old.cpp", old_source())
write(work / "new.cpp", Path("src/nat/ops/cpu/na_cpu.cpp").read_bytes())
flags = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"] + (
    ["-DNAT_LANES8"] if NARROW else []
)
modules = {
    name: cpp_extension.load(
        name=f"r17_{name}{'8' if NARROW else ''}",
        sources=[str(work / f"{name}.cpp")],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        build_directory=build_dir(f"{name}{'8' if NARROW else ''}"),
    )
    for name in ("old", "new")
}
flush = torch.zeros(16 * 1024 * 1024)
torch.manual_seed(0)
print(f"{DTYPE} {MODE} {'8' if NARROW else 'native'}-lane build{', cold' if COLD else ''}")


def measure(side: int, heads: int) -> tuple[dict, float]:
    """Median ms of each kernel at one level, and the new results' largest difference."""
    batch, dim, n = 8, 32, side * side
    qkv = torch.randn(batch, n, 3, heads, dim).to(DTYPE)
    q, k, v = qkv.unbind(2)
    rpb = (0.1 * torch.randn(heads, 169)).to(DTYPE)
    grad = torch.randn(batch, n, heads, dim).to(DTYPE)
    params = NAParams((7, 7), (1, 1), (1, 1), (False, False), dim**-0.5)
    nbr, valid, bidx = neighbor_table((side, side), params, torch.device("cpu"))
    rows, pattern = _tables((side, side), params)[2:]

    def make(module, tables, extra):
        out, lse, logits = module.na_forward(q, k, v, rpb, *tables, params.scale, True, **extra)

        def call():
            if MODE == "fwd":
                return module.na_forward(q, k, v, rpb, *tables, params.scale, False, **extra)[:2]
            dqkv = torch.empty(qkv.shape, dtype=DTYPE)
            drpb = module.na_backward(
                grad, q, k, v, rpb, out, lse, *tables, None, params.scale, dqkv, logits, **extra
            )[3]
            return dqkv, drpb

        return call

    # The old kernel takes the full [N, P] rpb index table, the new one its distinct rows.
    calls = {
        "old": make(modules["old"], (nbr, bidx, valid), {}),
        "new": make(modules["new"], (nbr, rows, valid), {"bias_pattern": pattern}),
    }
    results = {name: [t.float() for t in call()] for name, call in calls.items()}
    times = {name: [] for name in calls}
    for _ in range(R):
        for name, call in calls.items():
            if COLD:
                flush.add_(1)
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * sorted(t)[len(t) // 2] for name, t in times.items()}
    diff = max(
        ((a - b).abs().max() / b.abs().max()).item()
        for a, b in zip(results["new"], results["old"], strict=True)
    )
    return ms, diff


for level, (side, heads) in enumerate(((56, 2), (28, 4), (14, 8), (7, 16)), start=1):
    ms, diff = measure(side, heads)
    print(
        f"level {level}: old {ms['old']:.2f} ms, new {ms['new']:.2f} ms, "
        f"new/old {ms['new'] / ms['old']:.3f}, largest difference {diff:.1e}"
    )
