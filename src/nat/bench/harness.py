"""Timing and peak-memory measurement shared by the op and model benchmarks.

Calls that are compared with each other are measured in one group and their repeats are
interleaved round-robin, rotating (A B C, B C A, C A B, ...), so drifting machine load and the
caches a neighbour flushes hit every method alike and the ratios of medians stay meaningful on a
busy machine.

Each timed call also counts the process's minor page faults (``getrusage``, where the OS has it):
memory the allocator hands back to the OS is faulted in again page by page, so how often that
happens depends on glibc's trim and mmap thresholds, which adapt to the process's allocation
history. :func:`pin_malloc` fixes them for a benchmark process.

Peak memory is the largest amount of tensor memory allocated *on top of what was live before the
call*, at any moment during the call:

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory
  allocated before the call.
- CPU: the allocator reports every allocation and free to the profiler
  (``torch.profiler.profile(profile_memory=True)``); the running sum of those events in time order
  is the live tensor memory, and its maximum is the peak. This counts tensors, not process RSS.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

__all__ = [
    "Measurement",
    "load_average",
    "machine_info",
    "measure_group",
    "peak_memory",
    "pin_malloc",
    "synchronize",
]

try:
    import resource
except ImportError:  # not on Windows
    resource = None


@dataclass
class Measurement:
    """The repeats of one measured call: seconds per call, peak bytes, or the error it raised."""

    times_s: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    error: str | None = None
    page_faults: list[int] = field(default_factory=list)

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None

    @property
    def median_page_faults(self) -> float | None:
        """Minor page faults per timed call (median); ``None`` where the OS does not count them."""
        return statistics.median(self.page_faults) if self.page_faults else None


# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_PINNED_MMAP_THRESHOLD = 32 << 20  # glibc's upper bound for it on 64-bit
_PINNED_TRIM_THRESHOLD = 1 << 30
_malloc_state = "default"


def pin_malloc() -> str:
    """Fix glibc malloc's mmap and trim thresholds for this process; returns what was set.

    By default glibc raises both thresholds as the process frees large blocks, and gives memory at
    the top of its heap back to the OS once more than the trim threshold is free. Whether a
    model's step then faults its activations in afresh (over 120,000 page faults per step and a
    fifth of its time, for NAT-Tiny's bf16 training step on a 2-core Xeon) or reuses them depends
    on what the process allocated before. Pinned, blocks up to 32 MiB come from the heap and
    freed memory stays there, so every model in the process is measured alike. Raises
    ``RuntimeError`` where the C library is not glibc.
    """
    global _malloc_state
    libc_name = platform.libc_ver()[0]
    if libc_name != "glibc":
        raise RuntimeError(
            f"pinning malloc needs glibc's mallopt; this C library is {libc_name or 'unknown'}"
        )
    libc = ctypes.CDLL(None)
    for param, value in (
        (_M_MMAP_THRESHOLD, _PINNED_MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, _PINNED_TRIM_THRESHOLD),
    ):
        if libc.mallopt(param, value) != 1:
            raise RuntimeError(f"mallopt({param}, {value}) failed")
    _malloc_state = (
        f"glibc pinned: M_MMAP_THRESHOLD {_PINNED_MMAP_THRESHOLD >> 20} MiB, "
        f"M_TRIM_THRESHOLD {_PINNED_TRIM_THRESHOLD >> 20} MiB"
    )
    return _malloc_state


def _minor_faults() -> int | None:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else None


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2: kineto logs every profiler start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_native_stderr():
        prof.start()
    try:
        fn()
    finally:
        with _quiet_native_stderr():
            prof.stop()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak tensor bytes allocated by one call of ``fn`` beyond those live before it."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type == "cpu":
        return _cpu_peak(fn)
    raise ValueError(f"peak memory is measured on cpu and cuda, not {device.type}")


def _timed(fn: Callable[[], object], device: torch.device, into: Measurement) -> None:
    """Time one call of ``fn`` and count its page faults, into ``into``."""
    synchronize(device)
    faults = _minor_faults()
    start = time.perf_counter()
    fn()
    synchronize(device)
    into.times_s.append(time.perf_counter() - start)
    if faults is not None:
        into.page_faults.append(_minor_faults() - faults)


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()


def measure_group(
    calls: Mapping[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    warmup: int,
    memory: bool = True,
    on_step: Callable[[], None] = lambda: None,
) -> dict[str, Measurement]:
    """Measure every call of ``calls`` ``repeats`` times, interleaved round-robin.

    The order rotates by one each round, so every call spends as many rounds in each position.

    Each call first runs ``warmup`` times (also interleaved), then ``repeats`` timed times, then,
    with ``memory``, once more for its peak memory. A call that raises is recorded with its error
    and leaves the rotation. ``on_step`` runs after every call (a progress bar's update).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    device = torch.device(device)
    results = {name: Measurement() for name in calls}

    def attempt(name: str, action: Callable[[], None]) -> None:
        if results[name].error is None:
            try:
                action()
            except (RuntimeError, ValueError, NotImplementedError, MemoryError) as err:
                results[name].error = _error_text(err)
                results[name].times_s.clear()
                results[name].page_faults.clear()
        on_step()

    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(warmup):
            for name, fn in calls.items():
                attempt(name, fn)
        names = list(calls)
        for round_ in range(repeats):
            # Rotate the order every round: no method always follows the same (perhaps
            # cache-flushing) neighbour.
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                fn = calls[name]
                attempt(name, lambda n=name, f=fn: _timed(f, device, results[n]))
    finally:
        if gc_was_enabled:
            gc.enable()
    if memory:
        for name, fn in calls.items():

            def record(n: str = name, f: Callable[[], object] = fn) -> None:
                results[n].peak_bytes = peak_memory(f, device)

            attempt(name, record)
    return results


def _nat_version() -> str:
    from .. import __version__

    return __version__


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "neon", "asimd")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in present]
    except OSError:
        pass
    return []


def _source_revision() -> dict:
    """The git commit of the ``nat`` source being measured, and whether it has local changes."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", "..") if commit else None
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``None`` where the OS has none)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _cpu_linear() -> str:
    """Where NAT's float32 CPU linears run (:func:`nat.nn.cpu_linear_backend`)."""
    from ..nn import cpu_linear_backend

    return cpu_linear_backend()


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on: CPU, cores, threads, load, library versions, GPU."""
    device = torch.device(device)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average": load_average(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "device": str(device),
        "nat": _nat_version(),
        "malloc": _malloc_state,
        "cpu_linear": _cpu_linear(),
        **_source_revision(),
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        info["timm"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
