"""Timing and peak-memory measurement shared by the op and model benchmarks.

Calls that are compared with each other are measured in one group and their repeats are
interleaved round-robin, rotating (A B C, B C A, C A B, ...), so drifting machine load and the
caches a neighbour flushes hit every method alike and the ratios of medians stay meaningful on a
busy machine.

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
    "synchronize",
]


@dataclass
class Measurement:
    """The repeats of one measured call: seconds per call, peak bytes, or the error it raised."""

    times_s: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    error: str | None = None

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None


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


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


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
                attempt(name, lambda n=name, f=fn: results[n].times_s.append(_timed(f, device)))
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
