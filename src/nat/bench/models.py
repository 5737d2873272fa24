"""Model benchmark: NAT against timm's Swin-T and ConvNeXt-T, inference and training.

Per model and dtype: inference throughput (images/s, ``eval()``, no grad) at each inference batch
size, and one training step (forward, cross-entropy, backward, fused AdamW step) at the training
batch size, with their peak memory. bfloat16 runs the model's float32 weights under
``torch.autocast``, the way mixed-precision training and inference are run. With ``onnx``, each
model is also exported to ONNX (:mod:`nat.export`, dynamic batch) and its float32 inference
measured in onnxruntime on the CPU (tasks ``onnx_b<batch>``; onnxruntime's memory is not seen by
PyTorch's profiler, so those rows carry no peak memory). All models of one dtype are measured in
one interleaved group, and every row carries its ratio to the baseline model (Swin-T by default)
for the same task. With ``compile``, each model is also wrapped in ``torch.compile`` (Inductor)
and its inference and training step measured in the same group (tasks ``compiled_infer_b<batch>``
and ``compiled_train``), with the compile time of each (the first call, untimed in the rows).
With ``breakdown``, each eager row also carries where its time goes (:mod:`nat.bench.breakdown`).

Each row also carries the model's FLOPs for the call (``torch.utils.flop_counter``: forward for
inference, forward and backward for training) and its share of the GEMM floor: the time those
FLOPs take at the machine's measured matrix-multiply rate in that dtype, over the measured time.
The rate is the faster of PyTorch's own product and, for float32 on the CPU, oneDNN's (the one
:class:`nat.nn.Linear` may use); both are recorded.
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ..engine import autocast, fused_kwargs
from ..nn import use_nat_linear
from ..nn.linear import onednn_available
from .breakdown import breakdown as time_operators
from .breakdown import mark
from .harness import Measurement, load_average, machine_info, measure_group, synchronize

__all__ = [
    "BASELINE_MODEL",
    "CUDA_BATCH",
    "CUDA_MODELS",
    "DEFAULT_MODELS",
    "MODEL_TARGETS",
    "QUICK_MODELS",
    "TARGET_MODEL",
    "check_model_targets",
    "gemm_rate",
    "run_models",
]

DEFAULT_MODELS = ("nat_mini", "nat_tiny", "swin_tiny_patch4_window7_224", "convnext_tiny")
BASELINE_MODEL = "swin_tiny_patch4_window7_224"
TARGET_MODEL = "nat_tiny"
CUDA_MODELS = ("nat_tiny", "swin_tiny_patch4_window7_224")
CUDA_BATCH = 64
"""On CUDA, ``nat bench models`` compares NAT-Tiny with Swin-T in bfloat16 at batch 64 (training
step and inference) unless told otherwise."""
QUICK_MODELS = ("test_vit", "test_convnext")
"""timm's tiny test models: a smoke test of the whole pipeline in seconds."""

_AMP = {torch.float32: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _register_nat_models() -> None:
    """Importing ``nat.models`` registers NAT/DiNAT with timm (absent while it is being written)."""
    with contextlib.suppress(ImportError):
        importlib.import_module("nat.models")


def _create(name: str, device: torch.device) -> nn.Module:
    if not timm.is_model(name):
        raise ValueError(f"model {name!r} is not registered with timm")
    return timm.create_model(name, pretrained=False).to(device)


def _input_size(model: nn.Module, img_size: int | None) -> tuple[int, int, int]:
    if img_size is not None:
        return (3, img_size, img_size)
    return tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return autocast(device, _AMP[dtype])


def _inference_call(
    model: nn.Module, images: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> Callable[[], None]:
    def call() -> None:
        model.eval()
        with torch.no_grad(), _autocast(device, dtype):
            model(images)

    return call


def _train_call(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, **fused_kwargs(model, "adamw"))

    def call() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, dtype):
            loss = nn.functional.cross_entropy(model(images), labels)
        mark("backward")
        loss.backward()
        mark("optimizer")
        optimizer.step()

    return call


def _flops(call: Callable[[], None]) -> int:
    """FLOPs of one call, counted by PyTorch's FLOP counter (matmuls, convolutions, NA)."""
    counter = FlopCounterMode(display=False)
    with counter:
        call()
    return counter.get_total_flops()


def gemm_rate(
    device: torch.device,
    dtype: torch.dtype,
    size: int = 1024,
    repeats: int = 5,
    library: str = "torch",
) -> float:
    """The machine's matrix-multiply rate in FLOP/s: the best of ``repeats`` square
    ``size``-by-``size`` products in ``dtype`` (the threads as set), after one warm-up.

    ``library``: ``torch`` (``a @ b``: the BLAS for float32 on the CPU) or ``onednn`` (the
    product of :class:`nat.nn.Linear`'s oneDNN path; float32 on the CPU only).
    """
    a = torch.randn(8 * size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    if library == "onednn":
        if device.type != "cpu" or dtype != torch.float32:
            raise ValueError(f"library='onednn' measures float32 on the CPU; got {device}, {dtype}")
        weight = b.t().contiguous()
        product = lambda: torch.ops.nat.linear(a, weight, None)  # noqa: E731
    elif library == "torch":
        product = lambda: a @ b  # noqa: E731
    else:
        raise ValueError(f"library={library!r}; expected torch or onednn")
    best = float("inf")
    for i in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        product()
        synchronize(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return 2 * a.shape[0] * size * size / best


def _gemm_rates(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """:func:`gemm_rate` of each library that multiplies ``dtype`` on ``device`` here."""
    rates = {"torch": gemm_rate(device, dtype)}
    if device.type == "cpu" and dtype == torch.float32 and onednn_available():
        rates["onednn"] = gemm_rate(device, dtype, library="onednn")
    return rates


def _compile_first_call(call: Callable[[], None], device: torch.device) -> float | str:
    """Seconds of the first call of a compiled model (tracing and code generation), or the
    error that compiling or running it raised."""
    synchronize(device)
    start = time.perf_counter()
    try:
        call()
    except Exception as err:
        return f"{type(err).__name__}: {err}".splitlines()[0]
    synchronize(device)
    return time.perf_counter() - start


def _onnx_call(session: object, images: torch.Tensor) -> Callable[[], None]:
    from ..export import run_onnx

    inputs = [images.numpy()]

    def call() -> None:
        run_onnx(session, inputs)

    return call


def _onnx_sessions(
    models: dict[str, nn.Module], img_size: int | None, folder: Path, generator: torch.Generator
) -> dict[str, object]:
    """An onnxruntime session per model (exported with a dynamic batch into ``folder``)."""
    from ..export import export_onnx, onnx_session

    sessions = {}
    for name, model in models.items():
        example = torch.randn((2, *_input_size(model, img_size)), generator=generator)
        path = export_onnx(model.eval(), example, folder / f"{name}.onnx", dynamic_batch=True)
        sessions[name] = onnx_session(path)
    return sessions


def run_models(
    models: Sequence[str] = DEFAULT_MODELS,
    device: torch.device | str = "cpu",
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16),
    batch_sizes: Sequence[int] = (1, 8),
    train_batch: int = 8,
    img_size: int | None = None,
    repeats: int = 5,
    warmup: int = 2,
    baseline: str = BASELINE_MODEL,
    target: str = TARGET_MODEL,
    progress: bool = True,
    command: str | None = None,
    seed: int = 0,
    onnx: bool = False,
    compile: bool = False,
    breakdown: bool = False,
    same_linear: bool = False,
) -> dict:
    """Measure ``models``; returns the JSON-ready result (rows, skipped models, machine, settings).

    A model timm does not know is skipped and listed under ``skipped``. The image size is the
    model's own (``pretrained_cfg["input_size"]``, 224 for the default models) unless given.
    ``onnx``: also onnxruntime inference rows (float32, CPU; needs the ``export`` extra).
    ``compile``: also rows of each model under ``torch.compile``, with their compile time.
    ``breakdown``: after the timed repeats, each eager row's call runs twice more under
    :func:`nat.bench.breakdown.breakdown`, whose result the row carries as ``breakdown``: its
    time per operator kind (attention, matmul, ...) and per phase, and its top operators.
    ``same_linear``: every model's ``nn.Linear`` layers run as NAT's do
    (:func:`nat.nn.use_nat_linear`), so that the comparison is like for like where NAT's float32
    CPU linears run in oneDNN and timm's in the BLAS.
    """
    device = torch.device(device)
    if onnx and (device.type != "cpu" or torch.float32 not in dtypes):
        raise ValueError("onnx rows run in onnxruntime on the CPU: use device cpu with float32")
    machine = machine_info(device)
    _register_nat_models()
    generator = torch.Generator().manual_seed(seed)
    loaded: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}
    for name in models:
        try:
            torch.manual_seed(seed)
            loaded[name] = _create(name, device)
            if same_linear:
                use_nat_linear(loaded[name])
        except (ValueError, RuntimeError) as err:
            skipped[name] = str(err)
    if baseline not in loaded:
        reason = skipped.get(baseline, "it is not among the models")
        raise ValueError(f"baseline model {baseline!r} cannot be measured: {reason}")
    tasks = [f"infer_b{b}" for b in batch_sizes] + ["train"]
    compiled = {name: torch.compile(model) for name, model in loaded.items()} if compile else {}
    steps = len(dtypes) * len(loaded) * len(tasks) * (1 + compile) * (warmup + repeats + 1)
    steps += onnx * len(loaded) * len(batch_sizes) * (warmup + repeats + 1)
    steps += breakdown * len(dtypes) * len(loaded) * len(tasks) * _BREAKDOWN_RUNS
    rows = []
    gemm_rates: dict[str, float] = {}
    gemm_libraries: dict[str, dict[str, float]] = {}
    folder = tempfile.TemporaryDirectory(prefix="nat-bench-onnx-")
    sessions = _onnx_sessions(loaded, img_size, Path(folder.name), generator) if onnx else {}
    with folder, tqdm(total=steps, desc="bench models", unit="call", disable=not progress) as bar:
        for dtype in dtypes:
            bar.set_postfix_str(str(dtype).removeprefix("torch."))
            calls: dict[str, Callable[[], None]] = {}
            batches: dict[str, int] = {}
            for name, model in loaded.items():
                size = _input_size(model, img_size)
                variants = {"": model, "compiled_": compiled.get(name)}
                for b in batch_sizes:
                    images = torch.randn((b, *size), generator=generator).to(device)
                    for prefix, module in variants.items():
                        if module is not None:
                            key = f"{name}|{prefix}infer_b{b}"
                            calls[key] = _inference_call(module, images, device, dtype)
                            batches[key] = b
                images = torch.randn((train_batch, *size), generator=generator).to(device)
                labels = torch.randint(model.num_classes, (train_batch,), generator=generator).to(
                    device
                )
                for prefix, module in variants.items():
                    if module is not None:
                        key = f"{name}|{prefix}train"
                        calls[key] = _train_call(module, images, labels, device, dtype)
                        batches[key] = train_batch
                for b in batch_sizes if dtype == torch.float32 and name in sessions else ():
                    images = torch.randn((b, *size), generator=generator)
                    calls[f"{name}|onnx_b{b}"] = _onnx_call(sessions[name], images)
                    batches[f"{name}|onnx_b{b}"] = b
            first = {
                k: _compile_first_call(f, device) for k, f in calls.items() if "|compiled_" in k
            }
            compile_s = {k: v for k, v in first.items() if isinstance(v, float)}
            compile_errors = {k: v for k, v in first.items() if isinstance(v, str)}
            for key in compile_errors:
                del calls[key]
            # A compiled call does the eager call's arithmetic: count the eager one.
            flops = {k: _flops(f) for k, f in calls.items() if _runtime(k.split("|")[1]) == "torch"}
            flops |= {key: flops[key.replace("|compiled_", "|")] for key in compile_s}
            dtype_name = str(dtype).removeprefix("torch.")
            by_library = gemm_libraries[dtype_name] = _gemm_rates(device, dtype)
            rate = gemm_rates[dtype_name] = max(by_library.values())
            measured = measure_group(calls, device, repeats, warmup, on_step=bar.update)
            measured |= {k: Measurement(error=e) for k, e in compile_errors.items()}
            profiles = {}
            for key, f in calls.items() if breakdown else ():
                if _runtime(key.split("|")[1]) == "torch" and not measured[key].error:
                    profiles[key] = time_operators(f, device, repeats=_BREAKDOWN_RUNS)
                    bar.update(_BREAKDOWN_RUNS)
            for key, m in measured.items():
                name, task = key.split("|")
                median_ms = None if m.median_s is None else 1e3 * m.median_s
                rows.append(
                    {
                        "model": name,
                        "dtype": str(dtype).removeprefix("torch."),
                        "task": task,
                        "batch": batches[key],
                        "img_size": _input_size(loaded[name], img_size)[-1],
                        "median_ms": median_ms,
                        "times_ms": [1e3 * t for t in m.times_s],
                        "page_faults": m.median_page_faults,
                        "images_per_s": None if not median_ms else batches[key] / median_ms * 1e3,
                        "runtime": _runtime(task),
                        "peak_bytes": None if task.startswith("onnx") else m.peak_bytes,
                        "compile_s": compile_s.get(key),
                        "flops": flops.get(key),
                        "gemm_floor_share": _floor_share(flops.get(key), rate, median_ms),
                        "error": m.error,
                    }
                    | ({"breakdown": profiles[key]} if key in profiles else {})
                )
    _add_ratios(rows, baseline)
    return {
        "benchmark": "models",
        "command": command,
        "machine": {**machine, "load_average_end": load_average()},
        "settings": {
            "device": str(device),
            "dtypes": [str(d).removeprefix("torch.") for d in dtypes],
            "batch_sizes": list(batch_sizes),
            "train_batch": train_batch,
            "img_size": img_size,
            "repeats": repeats,
            "warmup": warmup,
            "onnx": onnx,
            "compile": compile,
            "breakdown": breakdown,
            "gemm_rate_flops": gemm_rates,
            "gemm_rate_flops_by_library": gemm_libraries,
            "same_linear": same_linear,
            "baseline": baseline,
            "target": target,
            "train_step": "forward + cross-entropy + backward + AdamW step (fused on CPU and CUDA)",
            "memory_method": "cuda max_memory_allocated"
            if device.type == "cuda"
            else "torch.profiler memory events (live tensor bytes)",
        },
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in loaded.items()},
        "skipped": skipped,
        "rows": rows,
        "checks": check_model_targets(rows, baseline, target),
    }


_BREAKDOWN_RUNS = 2
"""Runs of each call under the operator timer (``breakdown``); its numbers are their mean."""


def _runtime(task: str) -> str:
    if task.startswith("onnx"):
        return "onnxruntime"
    return "compiled" if task.startswith("compiled_") else "torch"


def _floor_share(flops: int | None, rate: float, median_ms: float | None) -> float | None:
    """The GEMM floor (``flops`` at ``rate`` FLOP/s) over the measured time: 1.0 would mean the
    call ran all its FLOPs at the speed of one large matrix multiply."""
    if not flops or not median_ms:
        return None
    return flops / rate / (median_ms / 1e3)


def _add_ratios(rows: list[dict], baseline: str) -> None:
    """``time_ratio_to_baseline`` and ``memory_ratio_to_baseline`` against the same dtype/task."""
    base = {(r["dtype"], r["task"]): r for r in rows if r["model"] == baseline}
    for row in rows:
        ref = base.get((row["dtype"], row["task"]))
        row["time_ratio_to_baseline"] = (
            row["median_ms"] / ref["median_ms"]
            if ref and ref["median_ms"] and row["median_ms"]
            else None
        )
        row["memory_ratio_to_baseline"] = (
            row["peak_bytes"] / ref["peak_bytes"]
            if ref and ref["peak_bytes"] and row["peak_bytes"] is not None
            else None
        )


MODEL_TARGETS = (
    ("float32", "infer_b8", 1.2, "inference images/s ratio (batch 8, float32)"),
    ("float32", "train", 1.0, "training speed: inverse step-time ratio (float32)"),
    ("bfloat16", "infer_b8", 1.0, "inference images/s ratio (batch 8, bfloat16)"),
    ("bfloat16", "train", 1.0, "training speed: inverse step-time ratio (bfloat16)"),
    ("float32", "compiled_infer_b8", 1.0, "compiled inference images/s ratio (batch 8, float32)"),
    ("float32", "compiled_train", 1.0, "compiled training speed ratio (float32)"),
)
"""(dtype, task, least speed-up of the target model over the baseline, label): issue 14's."""


def check_model_targets(rows: Sequence[dict], baseline: str, target: str) -> list[dict]:
    """:data:`MODEL_TARGETS` for the rows measured: ``target``'s speed over ``baseline``'s
    (images/s, or inverse step time), each at least its limit."""
    index = {(r["model"], r["dtype"], r["task"]): r for r in rows}
    checks = []
    for dtype, task, limit, label in MODEL_TARGETS:
        row, ref = index.get((target, dtype, task)), index.get((baseline, dtype, task))
        if not row or not ref or not row["median_ms"] or not ref["median_ms"]:
            continue
        speedup = ref["median_ms"] / row["median_ms"]
        checks.append(
            {
                "target": f"{target} / {baseline} {label}",
                "method": target,
                "value": speedup,
                "rule": ">=",
                "limit": limit,
                "passed": speedup >= limit,
            }
        )
    return checks
