"""Where a call's time goes: every operator it dispatches, timed and grouped by kind.

:func:`breakdown` runs a call under a ``TorchDispatchMode`` that times each operator the call
dispatches (forward, backward and optimizer alike: on the CPU autograd runs the backward in the
calling thread), counts its FLOPs with ``torch.utils.flop_counter``'s formulas (the NA ops
register theirs) and sorts it into a :data:`CATEGORIES` kind. An operator's time is its own
wall time, threads included, and covers whatever it calls inside (a custom op's aten calls are
its own). What the operators' times do not cover (Python, module calls, autograd's bookkeeping
between operators, plus the mode's own cost) is the gap between their sum and the call's wall
time, which is reported too; the mode makes that gap larger than it is in an untimed call.

A call can name its phases with :func:`mark` (``"backward"``, ``"optimizer"``); each starts in
``"forward"``. On CUDA every operator is synchronised before and after, which serialises the
call: its operators' times are then exact, and its wall time is not the untimed one.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .harness import synchronize

__all__ = ["CATEGORIES", "breakdown", "category", "mark"]

CATEGORIES: dict[str, tuple[str, ...]] = {
    # Swin's window attention is bmm + softmax; NA is its own ops (nat::*); ViTs use SDPA.
    "attention": (
        "aten.bmm",
        "aten.baddbmm",
        "aten._softmax",
        "aten._softmax_backward_data",
        "aten._safe_softmax",
        "aten._scaled_dot_product_flash_attention_for_cpu",
        "aten._scaled_dot_product_flash_attention_for_cpu_backward",
        "aten._scaled_dot_product_efficient_attention",
        "aten._scaled_dot_product_efficient_attention_backward",
        "aten._scaled_dot_product_flash_attention",
        "aten._scaled_dot_product_flash_attention_backward",
        "aten._scaled_dot_product_cudnn_attention",
        "aten._scaled_dot_product_cudnn_attention_backward",
    ),
    "matmul": ("aten.mm", "aten.addmm", "nat.linear", "nat.linear_weight_grad"),
    "convolution": ("aten.convolution", "aten.convolution_backward"),
    "normalisation": (
        "aten.native_layer_norm",
        "aten.native_layer_norm_backward",
        "aten.native_batch_norm",
        "aten.native_batch_norm_backward",
        "aten._native_batch_norm_legit",
        "aten._native_batch_norm_legit_no_training",
        "aten.native_group_norm",
        "aten.native_group_norm_backward",
    ),
    "activation": (
        "aten.gelu",
        "aten.gelu_backward",
        "aten.relu",
        "aten.threshold_backward",
        "aten.silu",
        "aten.silu_backward",
        "aten.hardswish",
        "aten.hardswish_backward",
    ),
    "copies and layout": (
        "aten._to_copy",
        "aten.copy_",
        "aten.clone",
        "aten.cat",
        "aten.stack",
        "aten.roll",
        "aten.constant_pad_nd",
        "aten.index",
        "aten.index_put",
        "aten.index_put_",
    ),
}
"""Operator kinds by ``OpOverloadPacket`` name; every other op of the ``nat`` namespace is
attention, and whatever is listed nowhere is ``"other"`` (elementwise arithmetic, reductions,
views, the optimizer's updates)."""

_KIND = {op: kind for kind, ops in CATEGORIES.items() for op in ops}


def category(op: str) -> str:
    """The :data:`CATEGORIES` kind of an operator named like ``"aten.mm"`` or ``"nat.na_op"``."""
    if op in _KIND:
        return _KIND[op]
    return "attention" if op.startswith("nat.") else "other"


_ACTIVE: list[_OpTimer] = []


def mark(phase: str) -> None:
    """Start ``phase`` of the call being broken down (no-op when there is none)."""
    if _ACTIVE:
        _ACTIVE[-1].phase = phase


class _OpTimer(TorchDispatchMode):
    """Seconds, calls and FLOPs per (phase, operator) of everything dispatched while active."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.phase = "forward"
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self.flops: dict[tuple[str, str], int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        synchronize(self.device)
        start = time.perf_counter()
        out = func(*args, **kwargs)
        synchronize(self.device)
        key = (self.phase, str(func.overloadpacket))
        self.seconds[key] += time.perf_counter() - start
        self.calls[key] += 1
        formula = flop_registry.get(func.overloadpacket)
        if formula is not None:
            self.flops[key] += formula(*args, **kwargs, out_val=out)
        return out


def breakdown(
    call: Callable[[], object], device: torch.device | str = "cpu", repeats: int = 2, top: int = 12
) -> dict:
    """Run ``call`` ``repeats`` times under the operator timer; per call (the mean of the runs):

    - ``wall_ms``: its wall time under the timer;
    - ``ops_ms``: the summed time of its operators, and ``gap_ms`` = wall - ops;
    - ``phases``: ms per phase (:func:`mark`), in the order they ran;
    - ``categories``: ``{kind: {"ms", "calls", "gflop"}}`` for every :data:`CATEGORIES` kind seen,
      plus ``"other"``;
    - ``ops``: the ``top`` operators by time, ``{"op", "category", "ms", "calls", "gflop"}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    device = torch.device(device)
    timer = _OpTimer(device)
    walls = []
    for _ in range(repeats):
        timer.phase = "forward"
        _ACTIVE.append(timer)
        try:
            synchronize(device)
            start = time.perf_counter()
            with timer:
                call()
            synchronize(device)
            walls.append(time.perf_counter() - start)
        finally:
            _ACTIVE.remove(timer)
    phases: dict[str, float] = {}
    ops: dict[str, dict] = {}
    for (phase, op), seconds in timer.seconds.items():
        phases[phase] = phases.get(phase, 0.0) + seconds
        entry = ops.setdefault(op, {"op": op, "category": category(op), "s": 0.0, "n": 0, "f": 0})
        entry["s"] += seconds
        entry["n"] += timer.calls[(phase, op)]
        entry["f"] += timer.flops[(phase, op)]
    categories: dict[str, dict] = {}
    for entry in ops.values():
        kind = categories.setdefault(entry["category"], {"s": 0.0, "n": 0, "f": 0})
        for field in ("s", "n", "f"):
            kind[field] += entry[field]

    def per_call(totals: dict) -> dict:
        return {
            "ms": 1e3 * totals["s"] / repeats,
            "calls": totals["n"] / repeats,
            "gflop": totals["f"] / repeats / 1e9,
        }

    ops_s = sum(timer.seconds.values()) / repeats
    wall_s = statistics.fmean(walls)
    ranked = sorted(ops.values(), key=lambda e: -e["s"])[:top]
    return {
        "wall_ms": 1e3 * wall_s,
        "ops_ms": 1e3 * ops_s,
        "gap_ms": 1e3 * (wall_s - ops_s),
        "phases": {phase: 1e3 * s / repeats for phase, s in phases.items()},
        "categories": {
            kind: per_call(categories[kind])
            for kind in (*CATEGORIES, "other")
            if kind in categories
        },
        "ops": [{"op": e["op"], "category": e["category"], **per_call(e)} for e in ranked],
    }
