"""Results as text: Markdown tables (pasted as-is into docs/benchmarks.md) and JSON files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .. import files

__all__ = [
    "breakdown_tables",
    "checks_table",
    "format_result",
    "machine_line",
    "models_table",
    "ops_table",
    "write_json",
]

MIB = 2**20


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _tflops(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.1f}"


def _brief(error: str) -> str:
    """An error's first sentence, for a table cell (the JSON keeps its first line)."""
    sentence = error.split(". ", 1)[0].rstrip(".")
    return sentence if len(sentence) <= 90 else sentence[:87] + "..."


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def ops_table(result: dict) -> str:
    """One line per (shape, method): median ms and peak MiB of both modes, each with ``/ WSA``,
    TFLOP/s with its ratio to dense SDPA's, and the forward's largest error."""
    by_key = {(r["shape"], r["method"], r["mode"]): r for r in result["rows"]}
    order: list[tuple[str, str]] = []
    for r in result["rows"]:
        if (r["shape"], r["method"]) not in order:
            order.append((r["shape"], r["method"]))
    shapes = {s["name"]: s for s in result["settings"]["shapes"]}
    lines = []
    for shape_name, method in order:
        s = shapes[shape_name]
        extent = [s["batch"], *([s["depth"]] if s.get("depth") else []), s["height"], s["width"]]
        size = f"{'x'.join(map(str, extent))}, {s['heads']}h x {s['head_dim']}"
        window = f"k{s['kernel_size']}" + (f" d{s['dilation']}" if s.get("dilation", 1) > 1 else "")
        cells = [f"{shape_name} ({size}, {window})", method]
        notes = []
        for mode in ("forward", "forward+backward"):
            r = by_key.get((shape_name, method, mode))
            if r is None:
                cells += [""] * 6
                continue
            if r["error"]:
                cells += ["error"] + [""] * 5
                notes.append(f"{mode}: {_brief(r['error'])}")
                continue
            cells += [
                _ms(r["median_ms"]),
                _ratio(r["ratio_to_wsa"]),
                _mib(r["peak_bytes"]),
                _ratio(r["memory_ratio_to_wsa"]),
                _tflops(r.get("tflops")),
                _ratio(r.get("tflops_ratio_to_sdpa")),
            ]
        row = next(r for k, r in by_key.items() if k[:2] == (shape_name, method))
        error = row.get("max_abs_error")
        cells.append("" if error is None else f"{error:.1e} ({row['checked_against']})")
        if not row["rpb"] and s.get("rpb"):
            notes.insert(0, "no rpb")
        cells.append("; ".join(notes))
        lines.append(cells)
    header = [
        "shape",
        "method",
        "fwd ms",
        "fwd / WSA",
        "fwd MiB",
        "MiB / WSA",
        "fwd TFLOP/s",
        "/ SDPA",
        "fwd+bwd ms",
        "fwd+bwd / WSA",
        "fwd+bwd MiB",
        "MiB / WSA",
        "fwd+bwd TFLOP/s",
        "/ SDPA",
        "max error",
        "note",
    ]
    return _table(header, lines)


def models_table(result: dict) -> str:
    """One line per (model, dtype): images/s per batch, training step, peaks, ratios to baseline."""
    rows = result["rows"]
    batch_sizes = result["settings"]["batch_sizes"]
    baseline = result["settings"]["baseline"]
    by_key = {(r["model"], r["dtype"], r["task"]): r for r in rows}
    order: list[tuple[str, str]] = []
    for r in rows:
        if (r["model"], r["dtype"]) not in order:
            order.append((r["model"], r["dtype"]))
    largest = f"infer_b{max(batch_sizes)}"
    lines = []
    for model, dtype in order:
        cells = [model, dtype]
        errors = []
        for b in batch_sizes:
            r = by_key[(model, dtype, f"infer_b{b}")]
            cells.append("error" if r["error"] else _ms(r["images_per_s"]))
            if r["error"]:
                errors.append(f"b{b}: {_brief(r['error'])}")
        big = by_key[(model, dtype, largest)]
        speed = None if not big["time_ratio_to_baseline"] else 1 / big["time_ratio_to_baseline"]
        cells += [_ratio(speed), _mib(big["peak_bytes"])]
        train = by_key[(model, dtype, "train")]
        if train["error"]:
            errors.append(f"train: {_brief(train['error'])}")
        cells += [
            "error" if train["error"] else _ms(train["median_ms"]),
            _ratio(train["time_ratio_to_baseline"]),
            _mib(train["peak_bytes"]),
            _ratio(train["memory_ratio_to_baseline"]),
            "; ".join(errors),
        ]
        lines.append(cells)
    b = max(batch_sizes)
    train_batch = result["settings"]["train_batch"]
    header = [
        "model",
        "dtype",
        *(f"img/s b{size}" for size in batch_sizes),
        f"img/s b{b} / {_short(baseline)}",
        f"infer b{b} MiB",
        f"train step ms (b{train_batch})",
        f"train time / {_short(baseline)}",
        "train MiB",
        "MiB / " + _short(baseline),
        "note",
    ]
    return _table(header, lines)


def onnx_table(result: dict) -> str:
    """One line per model: float32 images/s in eager PyTorch and in onnxruntime per batch size,
    onnxruntime's speed-up over eager, and its images/s against the baseline's in onnxruntime."""
    by_key = {(r["model"], r["task"]): r for r in result["rows"] if r["dtype"] == "float32"}
    batch_sizes = result["settings"]["batch_sizes"]
    baseline = _short(result["settings"]["baseline"])
    lines = []
    for model in dict.fromkeys(r["model"] for r in result["rows"]):
        cells = [model]
        for b in batch_sizes:
            eager, ort = by_key.get((model, f"infer_b{b}")), by_key.get((model, f"onnx_b{b}"))
            if ort is None or eager is None:
                cells += ["-"] * 4
                continue
            fast = eager["median_ms"] / ort["median_ms"] if ort["median_ms"] else None
            vs = 1 / ort["time_ratio_to_baseline"] if ort["time_ratio_to_baseline"] else None
            cells += [_ms(eager["images_per_s"]), _ms(ort["images_per_s"]), _ratio(fast)]
            cells.append(_ratio(vs))
        lines.append(cells)
    header = ["model (float32)"]
    for b in batch_sizes:
        header += [f"eager img/s b{b}", f"onnxruntime img/s b{b}", "ort / eager", f"/ {baseline}"]
    return _table(header, lines)


def compiled_table(result: dict) -> str:
    """One line per (model, dtype) under ``torch.compile``: compile time, speed, its speed-up
    over eager and its speed against the compiled baseline, for the largest inference batch and
    the training step."""
    rows = [r for r in result["rows"] if r["runtime"] != "onnxruntime"]
    by_key = {(r["model"], r["dtype"], r["task"]): r for r in rows}
    baseline = _short(result["settings"]["baseline"])
    b = max(result["settings"]["batch_sizes"])
    lines = []
    for model, dtype in dict.fromkeys((r["model"], r["dtype"]) for r in rows):
        cells = [model, dtype]
        for task in (f"infer_b{b}", "train"):
            eager, comp = (
                by_key.get((model, dtype, task)),
                by_key.get((model, dtype, f"compiled_{task}")),
            )
            if comp is None or eager is None or comp["error"]:
                cells += ["error" if comp and comp["error"] else "-"] * 4
                continue
            fast = eager["median_ms"] / comp["median_ms"] if comp["median_ms"] else None
            vs = 1 / comp["time_ratio_to_baseline"] if comp["time_ratio_to_baseline"] else None
            cells += [f"{comp['compile_s']:.0f}", _ms(comp["median_ms"]), _ratio(fast), _ratio(vs)]
        lines.append(cells)
    header = ["model", "dtype"]
    for task in (f"infer b{b}", "train"):
        header += [f"{task} compile s", f"{task} ms", "compiled / eager", f"speed / {baseline}"]
    return _table(header, lines)


def _per_model(
    label: str, by_model: dict[str, dict], value: Callable[[dict], float | None], fmt: str
) -> list[str]:
    cells = [label]
    for breakdown in by_model.values():
        v = value(breakdown)
        cells.append("-" if v is None else fmt.format(v))
    return cells


def breakdown_tables(result: dict) -> str:
    """Per (dtype, task) with a ``breakdown``: each model's ms per call by operator kind and by
    phase, the gap between its operators, and its attention and matmul GFLOP."""
    groups: dict[tuple[str, str], dict[str, dict]] = {}
    for r in result["rows"]:
        if r.get("breakdown"):
            groups.setdefault((r["dtype"], r["task"]), {})[r["model"]] = r["breakdown"]
    tables = []
    for (dtype, task), by_model in groups.items():
        kinds = dict.fromkeys(k for b in by_model.values() for k in b["categories"])
        phases = dict.fromkeys(p for b in by_model.values() for p in b["phases"])
        ms = "{:.1f}"
        lines = [
            _per_model(k, by_model, lambda b, k=k: b["categories"].get(k, {}).get("ms"), ms)
            for k in kinds
        ]
        lines += [
            _per_model("all operators", by_model, lambda b: b["ops_ms"], ms),
            _per_model("between operators", by_model, lambda b: b["gap_ms"], ms),
            _per_model("wall (timed)", by_model, lambda b: b["wall_ms"], ms),
        ]
        if len(phases) > 1:
            lines += [
                _per_model(f"phase: {p}", by_model, lambda b, p=p: b["phases"].get(p), ms)
                for p in phases
            ]
        for kind in ("attention", "matmul"):
            gflop = lambda b, k=kind: b["categories"].get(k, {}).get("gflop")  # noqa: E731
            lines.append(_per_model(f"{kind} GFLOP", by_model, gflop, "{:.2f}"))
        tables.append(_table([f"ms per call ({dtype}, {task})", *by_model], lines))
    return "\n\n".join(tables)


def floor_table(result: dict) -> str:
    """Each row's share of the GEMM floor: its FLOPs at the measured matmul rate over its time."""
    rates = result["settings"].get("gemm_rate_flops", {})
    lines = []
    for r in result["rows"]:
        if r.get("gemm_floor_share") is None:
            continue
        rate = rates.get(r["dtype"])
        lines.append(
            [
                r["model"],
                r["dtype"],
                r["task"],
                f"{r['flops'] / 1e9:.1f}",
                "-" if rate is None else f"{rate / 1e9:.0f}",
                _ms(r["median_ms"]),
                f"{r['gemm_floor_share']:.2f}",
            ]
        )
    header = ["model", "dtype", "task", "GFLOP", "GEMM GFLOP/s", "ms", "GEMM-floor share"]
    return _table(header, lines)


def _short(model: str) -> str:
    return {"swin_tiny_patch4_window7_224": "Swin-T"}.get(model, model)


def checks_table(result: dict) -> str:
    """The targets of the issue with their measured value and verdict."""
    if not result.get("checks"):
        return "(no targets apply to these measurements)"
    lines = []
    for c in result["checks"]:
        verdict = "n/a" if c["passed"] is None else ("PASS" if c["passed"] else "FAIL")
        value = "-" if c["value"] is None else f"{c['value']:.2f}"
        lines.append([c["target"], c["method"], value, f"{c['rule']} {c['limit']:g}", verdict])
    return _table(["target", "method", "value", "needed", "verdict"], lines)


def machine_line(result: dict) -> str:
    """The machine in one line: CPU, cores, threads, load, versions."""
    m = result["machine"]
    load = m.get("load_average")
    parts = [
        m["cpu"],
        f"{m['usable_cores']} usable cores",
        f"{m['torch_threads']} torch threads",
        f"torch {m['torch']}",
    ]
    if m.get("gpu"):
        parts.insert(0, m["gpu"])
    if load:
        parts.append(f"load average {load[0]:.1f} at start")
    end = m.get("load_average_end")
    if end:
        parts.append(f"{end[0]:.1f} at end")
    return ", ".join(parts)


def format_result(result: dict) -> str:
    """Everything printed after a run: machine, command, table, targets."""
    table = ops_table(result) if result["benchmark"] == "ops" else models_table(result)
    lines = [f"machine: {machine_line(result)}"]
    if result.get("command"):
        lines.append(f"command: {result['command']}")
    settings = result["settings"]
    dtype = settings.get("dtype") or ",".join(settings.get("dtypes", []))
    lines.append(
        f"{dtype}, median of {settings['repeats']} interleaved repeats after "
        f"{settings['warmup']} warm-up, peak memory from {settings['memory_method']}"
    )
    lines += ["", table, "", checks_table(result)]
    if settings.get("onnx"):
        lines += ["", onnx_table(result)]
    if settings.get("compile"):
        lines += ["", compiled_table(result)]
    if result["benchmark"] == "models" and settings.get("gemm_rate_flops"):
        lines += ["", floor_table(result)]
        for dtype, rates in settings.get("gemm_rate_flops_by_library", {}).items():
            each = ", ".join(f"{name} {rate / 1e9:.0f}" for name, rate in rates.items())
            lines.append(f"{dtype} GEMM GFLOP/s by library: {each} (the floor takes the fastest)")
        machine = result.get("machine", {})
        if machine.get("cpu_linear"):
            same = " (every model's, --same-linear)" if settings.get("same_linear") else ""
            lines.append(f"NAT's float32 CPU linears: {machine['cpu_linear']}{same}")
    if settings.get("breakdown"):
        lines += ["", "where the time goes (operators timed one by one):", breakdown_tables(result)]
    for name, why in result.get("skipped", {}).items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


def write_json(result: dict, path: str | Path) -> None:
    """Write ``result`` as indented, valid JSON (atomically, creating the folder)."""
    files.write_json(path, result)
