"""Operator benchmark: neighborhood attention against window, unfold, dense and NATTEN attention.

One set of ``[B, H, W, heads, D]`` tensors per shape runs through every method, forward (no grad)
and forward+backward (gradients of query, key, value and rpb). Methods and modes of one shape are
measured in one interleaved group; every time is reported with its ratio to window self-attention
(WSA), the cost NA is claimed to match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .. import available_backends, na2d
from . import baselines
from .harness import Measurement, load_average, machine_info, measure_group

__all__ = [
    "LARGE_SHAPE",
    "MODES",
    "QUICK_SHAPES",
    "STAGE_SHAPES",
    "TARGETS",
    "Method",
    "OpShape",
    "check_targets",
    "default_methods",
    "run_ops",
    "shapes_by_name",
]

MODES = ("forward", "forward+backward")
REFERENCE_MAX_SCORES = 2**24
"""The dense ``reference`` backend runs only where ``B * heads * N^2`` stays below this."""


@dataclass(frozen=True)
class OpShape:
    """One benchmark input: ``[batch, height, width, heads, head_dim]`` with a square kernel."""

    name: str
    batch: int
    height: int
    width: int
    heads: int
    head_dim: int
    kernel_size: int
    rpb: bool = True
    target: bool = False
    """Whether the issue's NA-vs-WSA targets apply at this shape."""

    @property
    def tokens(self) -> int:
        return self.height * self.width


STAGE_SHAPES = (
    OpShape("stage1", 8, 56, 56, 2, 32, 7, target=True),
    OpShape("stage2", 8, 28, 28, 4, 32, 7, target=True),
    OpShape("stage3", 8, 14, 14, 8, 32, 7, target=True),
    OpShape("stage4", 8, 7, 7, 16, 32, 7, target=True),
)
"""NAT-Tiny's four levels at 224 x 224, batch 8."""
LARGE_SHAPE = OpShape("large", 1, 128, 128, 4, 32, 7)
QUICK_SHAPES = (
    OpShape("quick14", 2, 14, 14, 2, 16, 7),
    OpShape("quick9", 1, 9, 9, 2, 8, 3),
)
ALL_SHAPES = (*STAGE_SHAPES, LARGE_SHAPE, *QUICK_SHAPES)
DEFAULT_SHAPES = (*STAGE_SHAPES, LARGE_SHAPE)

TARGETS = {"forward": 1.0, "forward+backward": 1.5, "memory": 1.10, "natten_speedup": 100.0}
"""The fast path's targets: NA time / WSA time, NA peak / WSA peak, NATTEN time / NA time."""

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class Method:
    """A way of computing attention on a shape's ``(q, k, v, rpb)``."""

    name: str
    run: Callable[[OpShape, Inputs], torch.Tensor]
    uses_rpb: bool
    note: str = ""
    applies: Callable[[OpShape], bool] = lambda shape: True


def _na_method(backend: str) -> Method:
    def run(shape: OpShape, inputs: Inputs) -> torch.Tensor:
        q, k, v, rpb = inputs
        return na2d(q, k, v, shape.kernel_size, rpb=rpb, backend=backend)

    if backend == "reference":
        return Method(
            f"na/{backend}",
            run,
            True,
            "dense N x N definition",
            lambda s: s.batch * s.heads * s.tokens**2 <= REFERENCE_MAX_SCORES,
        )
    return Method(f"na/{backend}", run, True)


def _unfold(shape: OpShape, inputs: Inputs) -> torch.Tensor:
    q, k, v, rpb = inputs
    return baselines.unfold_na2d(q, k, v, shape.kernel_size, rpb=rpb)


def _natten(shape: OpShape, inputs: Inputs) -> torch.Tensor:
    q, k, v, _ = inputs
    return baselines.natten_na2d(q, k, v, shape.kernel_size)


def _wsa(shape: OpShape, inputs: Inputs) -> torch.Tensor:
    q, k, v, rpb = inputs
    return baselines.window_attention(q, k, v, shape.kernel_size, rpb=rpb)


def _sdpa(shape: OpShape, inputs: Inputs) -> torch.Tensor:
    q, k, v, _ = inputs
    return baselines.dense_attention(q, k, v)


BASELINES = {
    "unfold": Method("unfold", _unfold, True, "NA by F.unfold (the paper's pure-PyTorch style)"),
    "natten": Method("natten", _natten, False, "NATTEN, no RPB"),
    "wsa": Method("wsa", _wsa, True, "Swin window self-attention, window = kernel"),
    "sdpa": Method("sdpa", _sdpa, False, "dense F.scaled_dot_product_attention, no bias"),
}


def default_methods(
    device: torch.device,
    backends: Sequence[str] | None = None,
    baseline_names: Sequence[str] | None = None,
) -> list[Method]:
    """NA through each requested backend (default: all available), then the baselines.

    NATTEN is included when it is importable; ``reference`` only on shapes small enough for it.
    """
    available = available_backends(device)
    if backends is None:
        backends = available
    for name in backends:
        if name not in available:
            raise ValueError(f"backend {name!r} is not available on {device}: {available}")
    if baseline_names is None:
        baseline_names = [n for n in BASELINES if n != "natten" or baselines.natten_available()]
    for name in baseline_names:
        if name not in BASELINES:
            raise ValueError(f"baseline {name!r} is not one of {list(BASELINES)}")
        if name == "natten" and not baselines.natten_available():
            raise ValueError("baseline 'natten' needs NATTEN installed (pip install natten)")
    return [*(_na_method(b) for b in backends), *(BASELINES[n] for n in baseline_names)]


def _make_inputs(shape: OpShape, device: torch.device, dtype: torch.dtype, seed: int) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    size = (shape.batch, shape.height, shape.width, shape.heads, shape.head_dim)
    q, k, v = (torch.randn(size, generator=generator).to(device, dtype) for _ in range(3))
    span = 2 * shape.kernel_size - 1
    rpb = None
    if shape.rpb:
        rpb = (0.02 * torch.randn((shape.heads, span, span), generator=generator)).to(device, dtype)
    return q, k, v, rpb


def _calls(method: Method, shape: OpShape, inputs: Inputs) -> dict[str, Callable[[], object]]:
    q, k, v, rpb = inputs
    rpb = rpb if method.uses_rpb else None

    def forward() -> None:
        with torch.no_grad():
            method.run(shape, (q, k, v, rpb))

    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    rpb_leaf = None if rpb is None else rpb.detach().requires_grad_(True)
    grad_out = torch.randn_like(v)
    params = [*leaves, *([] if rpb_leaf is None else [rpb_leaf])]

    def forward_backward() -> None:
        for t in params:
            t.grad = None
        out = method.run(shape, (*leaves, rpb_leaf))
        out.backward(grad_out)

    return {"forward": forward, "forward+backward": forward_backward}


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


def run_ops(
    shapes: Sequence[OpShape] = DEFAULT_SHAPES,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    methods: Sequence[Method] | None = None,
    repeats: int = 10,
    warmup: int = 2,
    modes: Sequence[str] = MODES,
    progress: bool = True,
    command: str | None = None,
    seed: int = 0,
) -> dict:
    """Measure ``methods`` on ``shapes``; returns the JSON-ready result (rows, machine, settings).

    Each row holds one (shape, method, mode): all repeat times in ms, their median, the peak
    memory, and the ratios of both to WSA's on the same shape and mode.
    """
    device = torch.device(device)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {list(MODES)}")
    machine = machine_info(device)
    methods = list(default_methods(device) if methods is None else methods)
    plan = [(s, [m for m in methods if m.applies(s)]) for s in shapes]
    steps = sum(len(ms) * len(modes) * (warmup + repeats + 1) for _, ms in plan)
    rows = []
    with tqdm(total=steps, desc="bench ops", unit="call", disable=not progress) as bar:
        for shape, shape_methods in plan:
            bar.set_postfix_str(shape.name)
            inputs = _make_inputs(shape, device, dtype, seed)
            calls = {
                f"{method.name}|{mode}": fn
                for method in shape_methods
                for mode, fn in _calls(method, shape, inputs).items()
                if mode in modes
            }
            measured = measure_group(calls, device, repeats, warmup, on_step=bar.update)
            rows.extend(_shape_rows(shape, shape_methods, modes, measured))
    return {
        "benchmark": "ops",
        "command": command,
        "machine": {**machine, "load_average_end": load_average()},
        "settings": {
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "repeats": repeats,
            "warmup": warmup,
            "modes": list(modes),
            "methods": [m.name for m in methods],
            "natten": baselines.natten_version(),
            "shapes": [asdict(s) for s in shapes],
            "memory_method": "cuda max_memory_allocated"
            if device.type == "cuda"
            else "torch.profiler memory events (live tensor bytes)",
        },
        "rows": rows,
        "checks": check_targets(rows, shapes, methods),
    }


def _shape_rows(
    shape: OpShape,
    methods: Sequence[Method],
    modes: Sequence[str],
    measured: dict[str, Measurement],
) -> list[dict]:
    rows = []
    for mode in modes:
        wsa = measured.get(f"wsa|{mode}")
        for method in methods:
            m = measured[f"{method.name}|{mode}"]
            median_ms = None if m.median_s is None else 1e3 * m.median_s
            wsa_ms = None if wsa is None or wsa.median_s is None else 1e3 * wsa.median_s
            rows.append(
                {
                    "shape": shape.name,
                    "method": method.name,
                    "mode": mode,
                    "median_ms": median_ms,
                    "times_ms": [1e3 * t for t in m.times_s],
                    "peak_bytes": m.peak_bytes,
                    "ratio_to_wsa": _ratio(median_ms, wsa_ms),
                    "memory_ratio_to_wsa": _ratio(
                        m.peak_bytes, None if wsa is None else wsa.peak_bytes
                    ),
                    "rpb": shape.rpb and method.uses_rpb,
                    "note": method.note,
                    "error": m.error,
                }
            )
    return rows


def check_targets(
    rows: Sequence[dict], shapes: Sequence[OpShape], methods: Sequence[Method]
) -> list[dict]:
    """The issue's pass/fail targets for the best NA backend measured (not ``reference``)."""
    candidates = [m.name for m in methods if m.name.startswith("na/") and m.name != "na/reference"]
    if not candidates:
        return []
    na = candidates[0]
    index = {(r["shape"], r["method"], r["mode"]): r for r in rows}
    checks = []
    for shape in shapes:
        if not shape.target:
            continue
        for mode in MODES:
            row = index.get((shape.name, na, mode))
            if row is None:
                continue
            checks.append(
                _check(f"{shape.name} {mode} time", na, row["ratio_to_wsa"], TARGETS[mode])
            )
            memory = row["memory_ratio_to_wsa"]
            checks.append(_check(f"{shape.name} {mode} memory", na, memory, TARGETS["memory"]))
    stage1 = STAGE_SHAPES[0].name
    natten_row = index.get((stage1, "natten", "forward"))
    na_row = index.get((stage1, na, "forward"))
    if natten_row and na_row and natten_row["median_ms"] and na_row["median_ms"]:
        speedup = natten_row["median_ms"] / na_row["median_ms"]
        checks.append(
            {
                "target": f"{stage1} forward speedup over NATTEN",
                "method": na,
                "value": speedup,
                "rule": ">=",
                "limit": TARGETS["natten_speedup"],
                "passed": speedup >= TARGETS["natten_speedup"],
            }
        )
    return checks


def _check(target: str, method: str, ratio: float | None, limit: float) -> dict:
    return {
        "target": f"{target} / WSA",
        "method": method,
        "value": ratio,
        "rule": "<=",
        "limit": limit,
        "passed": None if ratio is None else ratio <= limit,
    }


def shapes_by_name(names: Sequence[str]) -> list[OpShape]:
    """The shapes named: ``stage1``..``stage4``, ``large``, ``quick14``, ``quick9``, or a set
    (``stages``, ``quick``)."""
    known = {s.name: (s,) for s in ALL_SHAPES}
    known["stages"] = STAGE_SHAPES
    known["quick"] = QUICK_SHAPES
    out: list[OpShape] = []
    for name in names:
        if name not in known:
            raise ValueError(f"shape {name!r} is not one of {list(known)}")
        out.extend(s for s in known[name] if s not in out)
    return out
