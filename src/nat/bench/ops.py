"""Operator benchmark: neighborhood attention against window, unfold, dense and NATTEN attention.

One set of ``[B, *spatial, heads, D]`` tensors per shape runs through every method, forward (no
grad) and forward+backward (gradients of query, key, value and rpb). Methods and modes of one
shape are measured in one interleaved group; every time is reported with its ratio to window
self-attention (WSA), the cost NA is claimed to match, and with its TFLOP/s by the spec's cost
formula and their ratio to dense SDPA's on the same tokens (the GPU targets). Every NA method's
forward is also checked against the reference (or, where its ``N x N`` scores do not fit, the
composite ``torch`` backend in float32): the ``max_abs_error`` column.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .. import available_backends, neighborhood_attention
from ..ops.dispatch import na_flops
from . import baselines
from .harness import Measurement, load_average, machine_info, measure_group

__all__ = [
    "CUDA_SHAPES",
    "GPU_TARGETS",
    "LARGE_SHAPE",
    "MODES",
    "QUICK_SHAPES",
    "STAGE_SHAPES",
    "TARGETS",
    "Method",
    "OpShape",
    "check_gpu_targets",
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
    """One benchmark input: ``[batch, (depth,) height, width, heads, head_dim]`` with a cubic
    kernel (``depth`` 0: a 2-D input)."""

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
    dilation: int = 1
    depth: int = 0

    @property
    def spatial(self) -> tuple[int, ...]:
        return (self.depth, self.height, self.width) if self.depth else (self.height, self.width)

    @property
    def tokens(self) -> int:
        return math.prod(self.spatial)

    @property
    def is_plain_2d(self) -> bool:
        """2-D without dilation: the shapes the 2-D baselines (WSA, unfold, NATTEN) take."""
        return not self.depth and self.dilation == 1

    def na_flops(self) -> int:
        """The spec's forward cost of NA on this shape (the same count for WSA's windows)."""
        size = (self.batch, *self.spatial, self.heads, self.head_dim)
        return na_flops(size, size, (self.kernel_size,) * len(self.spatial))

    def dense_flops(self) -> int:
        """Dense attention's forward cost on the same tokens: every key instead of a window."""
        return 2 * self.batch * self.heads * self.tokens**2 * 2 * self.head_dim


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
CUDA_SHAPES = (
    OpShape("nat-tiny-1", 64, 56, 56, 2, 32, 7),
    OpShape("nat-tiny-2", 64, 28, 28, 4, 32, 7),
    OpShape("nat-tiny-3", 64, 14, 14, 8, 32, 7),
    OpShape("nat-tiny-4", 64, 7, 7, 16, 32, 7),
    OpShape("k13-d1", 1, 128, 128, 8, 64, 13),
    OpShape("k13-d4", 1, 128, 128, 8, 64, 13, dilation=4),
    OpShape("3d-k7", 1, 64, 64, 8, 64, 7, depth=16),
)
"""The GPU shapes: NAT-Tiny's four levels at batch 64; 128 x 128 tokens, 8 heads, head_dim 64,
kernel 13 at dilation 1 and 4; a 16 x 64 x 64 volume with kernel 7 x 7 x 7."""
ALL_SHAPES = (*STAGE_SHAPES, LARGE_SHAPE, *QUICK_SHAPES, *CUDA_SHAPES)
DEFAULT_SHAPES = (*STAGE_SHAPES, LARGE_SHAPE)

TARGETS = {"forward": 1.0, "forward+backward": 1.5, "memory": 1.10, "natten_speedup": 100.0}
"""The fast path's targets: NA time / WSA time, NA peak / WSA peak, NATTEN time / NA time."""
GPU_TARGETS = {"forward": 0.50, "forward+backward": 0.35}
"""The Triton kernels' targets on an H100/H200: TFLOP/s as a fraction of dense SDPA's."""
CHECK_MAX_SCORES = 2**28
"""The correctness check uses the dense reference only where ``heads * N^2`` stays below this."""

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class Method:
    """A way of computing attention on a shape's ``(q, k, v, rpb)``."""

    name: str
    run: Callable[[OpShape, Inputs], torch.Tensor]
    uses_rpb: bool
    note: str = ""
    applies: Callable[[OpShape], bool] = lambda shape: True
    flops: Callable[[OpShape], int] = OpShape.na_flops
    """Forward cost by the spec's formula (forward+backward counts three times this)."""


def _na(shape: OpShape, inputs: Inputs, backend: str) -> torch.Tensor:
    q, k, v, rpb = inputs
    return neighborhood_attention(
        q, k, v, shape.kernel_size, dilation=shape.dilation, rpb=rpb, backend=backend
    )


def _na_method(backend: str) -> Method:
    def run(shape: OpShape, inputs: Inputs) -> torch.Tensor:
        return _na(shape, inputs, backend)

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


def _plain_2d(shape: OpShape) -> bool:
    return shape.is_plain_2d


def _2d(shape: OpShape) -> bool:
    return not shape.depth


BASELINES = {
    "unfold": Method(
        "unfold", _unfold, True, "NA by F.unfold (the paper's pure-PyTorch style)", _plain_2d
    ),
    "natten": Method("natten", _natten, False, "NATTEN, no RPB", _plain_2d),
    "wsa": Method("wsa", _wsa, True, "Swin window self-attention, window = kernel", _2d),
    "sdpa": Method(
        "sdpa",
        _sdpa,
        False,
        "dense F.scaled_dot_product_attention, no bias",
        flops=OpShape.dense_flops,
    ),
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
    size = (shape.batch, *shape.spatial, shape.heads, shape.head_dim)
    q, k, v = (torch.randn(size, generator=generator).to(device, dtype) for _ in range(3))
    span = (2 * shape.kernel_size - 1,) * len(shape.spatial)
    rpb = None
    if shape.rpb:
        rpb = (0.02 * torch.randn((shape.heads, *span), generator=generator)).to(device, dtype)
    return q, k, v, rpb


def forward_error(method: Method, shape: OpShape, inputs: Inputs) -> tuple[float | None, str]:
    """Largest absolute difference of ``method``'s forward on the first batch element from the
    reference's in float32, and what it was checked against (``"reference"``, or ``"torch"``
    where the dense ``N x N`` scores do not fit). ``None`` when the method failed."""
    one = (*(t[:1] for t in inputs[:3]), inputs[3])
    q, k, v, rpb = (None if t is None else t.float() for t in one)
    against = "reference" if shape.heads * shape.tokens**2 <= CHECK_MAX_SCORES else "torch"
    with torch.no_grad():
        try:
            out = method.run(shape, one if method.uses_rpb else (*one[:3], None))
        except (RuntimeError, ValueError):
            return None, against
        expected = _na(shape, (q, k, v, rpb if method.uses_rpb else None), against)
    return (out.float() - expected).abs().max().item(), against


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
            errors = {
                m.name: forward_error(m, shape, inputs)
                for m in shape_methods
                if m.name.startswith("na/") and m.name != "na/reference"
            }
            rows.extend(_shape_rows(shape, shape_methods, modes, measured, errors))
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
        "checks": [
            *check_targets(rows, shapes, methods),
            *(check_gpu_targets(rows, shapes) if device.type == "cuda" else []),
        ],
    }


def _shape_rows(
    shape: OpShape,
    methods: Sequence[Method],
    modes: Sequence[str],
    measured: dict[str, Measurement],
    errors: dict[str, tuple[float | None, str]] | None = None,
) -> list[dict]:
    """One row per (method, mode), with ratios to WSA's time and to dense SDPA's TFLOP/s, and
    the forward's error (``errors``: method name -> :func:`forward_error`)."""
    errors = errors or {}
    rows = []
    for mode in modes:
        wsa = measured.get(f"wsa|{mode}")
        passes = 1 if mode == "forward" else 3
        sdpa = measured.get(f"sdpa|{mode}")
        sdpa_tflops = _tflops(passes * shape.dense_flops(), sdpa)
        for method in methods:
            m = measured[f"{method.name}|{mode}"]
            median_ms = None if m.median_s is None else 1e3 * m.median_s
            wsa_ms = None if wsa is None or wsa.median_s is None else 1e3 * wsa.median_s
            tflops = _tflops(passes * method.flops(shape), m)
            error, against = errors.get(method.name, (None, None))
            rows.append(
                {
                    "shape": shape.name,
                    "method": method.name,
                    "mode": mode,
                    "median_ms": median_ms,
                    "times_ms": [1e3 * t for t in m.times_s],
                    "page_faults": m.median_page_faults,
                    "peak_bytes": m.peak_bytes,
                    "ratio_to_wsa": _ratio(median_ms, wsa_ms),
                    "memory_ratio_to_wsa": _ratio(
                        m.peak_bytes, None if wsa is None else wsa.peak_bytes
                    ),
                    "tflops": tflops,
                    "tflops_ratio_to_sdpa": _ratio(tflops, sdpa_tflops),
                    "max_abs_error": error,
                    "checked_against": against,
                    "rpb": shape.rpb and method.uses_rpb,
                    "note": method.note,
                    "error": m.error,
                }
            )
    return rows


def _tflops(flops: int, measurement: Measurement | None) -> float | None:
    if measurement is None or not measurement.median_s:
        return None
    return flops / measurement.median_s / 1e12


def check_gpu_targets(rows: Sequence[dict], shapes: Sequence[OpShape]) -> list[dict]:
    """The Triton kernels' GPU targets per shape: TFLOP/s at least :data:`GPU_TARGETS` of dense
    SDPA's, and faster than FlexAttention NA (``na/flex``)."""
    index = {(r["shape"], r["method"], r["mode"]): r for r in rows}
    checks = []
    for shape in shapes:
        for mode in MODES:
            row = index.get((shape.name, "na/triton", mode))
            if row is None:
                continue
            ratio = row["tflops_ratio_to_sdpa"]
            checks.append(
                {
                    "target": f"{shape.name} {mode} TFLOP/s / dense SDPA's",
                    "method": "na/triton",
                    "value": ratio,
                    "rule": ">=",
                    "limit": GPU_TARGETS[mode],
                    "passed": None if ratio is None else ratio >= GPU_TARGETS[mode],
                }
            )
            flex_row = index.get((shape.name, "na/flex", mode))
            if flex_row is not None:
                speedup = _ratio(flex_row["median_ms"], row["median_ms"])
                checks.append(
                    {
                        "target": f"{shape.name} {mode} speedup over FlexAttention NA",
                        "method": "na/triton",
                        "value": speedup,
                        "rule": ">",
                        "limit": 1.0,
                        "passed": None if speedup is None else speedup > 1.0,
                    }
                )
    return checks


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
    """The shapes named: ``stage1``..``stage4``, ``large``, ``quick14``, ``quick9``, the GPU
    shapes (``nat-tiny-1``..``nat-tiny-4``, ``k13-d1``, ``k13-d4``, ``3d-k7``), or a set
    (``stages``, ``quick``, ``cuda``)."""
    known = {s.name: (s,) for s in ALL_SHAPES}
    known["stages"] = STAGE_SHAPES
    known["quick"] = QUICK_SHAPES
    known["cuda"] = CUDA_SHAPES
    out: list[OpShape] = []
    for name in names:
        if name not in known:
            raise ValueError(f"shape {name!r} is not one of {list(known)}")
        out.extend(s for s in known[name] if s not in out)
    return out
