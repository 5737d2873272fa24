"""The harness measures what it says: repeats, interleaving, peak memory, errors."""

import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from nat.bench.harness import machine_info, measure_group, peak_memory, resource

MIB = 2**20


def test_peak_memory_counts_tensors_alive_together():
    def call():
        a = torch.empty(4 * MIB, dtype=torch.uint8)
        b = torch.empty(2 * MIB, dtype=torch.uint8)
        del a, b
        c = torch.empty(1 * MIB, dtype=torch.uint8)
        return c.numel()

    peak = peak_memory(call, torch.device("cpu"))
    assert 6 * MIB <= peak < 6 * MIB + 64 * 1024


def test_peak_memory_ignores_tensors_alive_before_the_call():
    resident = torch.ones(8 * MIB, dtype=torch.uint8)
    peak = peak_memory(lambda: resident.add_(1), torch.device("cpu"))
    assert peak < MIB


def test_measure_group_interleaves_rotating_repeats_and_keeps_going_after_an_error():
    order = []

    def ok(name):
        return lambda: order.append(name)

    def broken():
        raise RuntimeError("unsupported shape\nmore detail")

    results = measure_group(
        {"a": ok("a"), "b": ok("b"), "broken": broken}, torch.device("cpu"), repeats=3, warmup=1
    )
    assert (
        # warm-up a b (broken fails), then rounds in rotated order: ab, b(broken)a, (broken)ab
        order[:8] == ["a", "b", "a", "b", "b", "a", "a", "b"]
        and len(results["a"].times_s) == 3
        and results["a"].median_s >= 0
        and results["a"].peak_bytes is not None
        and results["broken"].error == "RuntimeError: unsupported shape"
        and results["broken"].median_s is None
    )


def test_machine_info_names_cpu_threads_and_torch():
    info = machine_info(torch.device("cpu"))
    assert info["cpu"] and info["torch_threads"] == torch.get_num_threads()
    assert info["torch"] == torch.__version__


needs_glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or resource is None, reason="needs glibc and getrusage"
)


@needs_glibc
def test_measure_group_counts_each_timed_calls_page_faults():
    # 64 MiB is above any mmap threshold: every call maps (and faults in) fresh pages.
    def fresh():
        torch.ones(64 * MIB, dtype=torch.uint8)

    results = measure_group(
        {"fresh": fresh, "idle": lambda: None}, torch.device("cpu"), repeats=3, warmup=1
    )
    assert len(results["fresh"].page_faults) == 3
    assert results["fresh"].median_page_faults >= 64 * MIB / 4096 / 4
    assert results["idle"].median_page_faults < 64


@needs_glibc
def test_pin_malloc_serves_large_blocks_from_the_heap():
    # In a fresh process, by the addresses: before pinning, a 16 MiB block is mapped on its own
    # (above the heap's end); after it, the block comes from the heap.
    script = textwrap.dedent(
        """
        import ctypes, torch
        from nat.bench.harness import machine_info, pin_malloc
        libc = ctypes.CDLL(None)
        libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        libc.sbrk.argtypes = [ctypes.c_ssize_t]
        size = 16 << 20
        before = libc.malloc(size)
        mapped_before = before > libc.sbrk(0)
        libc.free(before)
        state = pin_malloc()
        block = libc.malloc(size)
        in_heap = block < libc.sbrk(0)
        libc.free(block)
        print(mapped_before, in_heap, machine_info(torch.device("cpu"))["malloc"] == state)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True"]
