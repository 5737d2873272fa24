"""The harness measures what it says: repeats, interleaving, peak memory, errors."""

import torch

from nat.bench.harness import machine_info, measure_group, peak_memory

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
