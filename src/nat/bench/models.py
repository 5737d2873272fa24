"""Model benchmark: NAT against timm's Swin-T and ConvNeXt-T, inference and training.

Per model and dtype: inference throughput (images/s, ``eval()``, no grad) at each inference batch
size, and one training step (forward, cross-entropy, backward, AdamW step) at the training batch
size, with their peak memory. bfloat16 runs the model's float32 weights under
``torch.autocast``, the way mixed-precision training and inference are run. With ``onnx``, each
model is also exported to ONNX (:mod:`nat.export`, dynamic batch) and its float32 inference
measured in onnxruntime on the CPU (tasks ``onnx_b<batch>``; onnxruntime's memory is not seen by
PyTorch's profiler, so those rows carry no peak memory). All models of one dtype are measured in
one interleaved group, and every row carries its ratio to the baseline model (Swin-T by default)
for the same task.
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import timm
import torch
from torch import nn
from tqdm.auto import tqdm

from ..engine import autocast
from .harness import load_average, machine_info, measure_group

__all__ = [
    "BASELINE_MODEL",
    "CUDA_BATCH",
    "CUDA_MODELS",
    "DEFAULT_MODELS",
    "QUICK_MODELS",
    "TARGET_MODEL",
    "check_model_targets",
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
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def call() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, dtype):
            loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return call


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
) -> dict:
    """Measure ``models``; returns the JSON-ready result (rows, skipped models, machine, settings).

    A model timm does not know is skipped and listed under ``skipped``. The image size is the
    model's own (``pretrained_cfg["input_size"]``, 224 for the default models) unless given.
    ``onnx``: also onnxruntime inference rows (float32, CPU; needs the ``export`` extra).
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
        except (ValueError, RuntimeError) as err:
            skipped[name] = str(err)
    if baseline not in loaded:
        reason = skipped.get(baseline, "it is not among the models")
        raise ValueError(f"baseline model {baseline!r} cannot be measured: {reason}")
    tasks = [f"infer_b{b}" for b in batch_sizes] + ["train"]
    steps = len(dtypes) * len(loaded) * len(tasks) * (warmup + repeats + 1)
    steps += onnx * len(loaded) * len(batch_sizes) * (warmup + repeats + 1)
    rows = []
    folder = tempfile.TemporaryDirectory(prefix="nat-bench-onnx-")
    sessions = _onnx_sessions(loaded, img_size, Path(folder.name), generator) if onnx else {}
    with folder, tqdm(total=steps, desc="bench models", unit="call", disable=not progress) as bar:
        for dtype in dtypes:
            bar.set_postfix_str(str(dtype).removeprefix("torch."))
            calls: dict[str, Callable[[], None]] = {}
            batches: dict[str, int] = {}
            for name, model in loaded.items():
                size = _input_size(model, img_size)
                for b in batch_sizes:
                    images = torch.randn((b, *size), generator=generator).to(device)
                    calls[f"{name}|infer_b{b}"] = _inference_call(model, images, device, dtype)
                    batches[f"{name}|infer_b{b}"] = b
                images = torch.randn((train_batch, *size), generator=generator).to(device)
                labels = torch.randint(model.num_classes, (train_batch,), generator=generator).to(
                    device
                )
                calls[f"{name}|train"] = _train_call(model, images, labels, device, dtype)
                batches[f"{name}|train"] = train_batch
                for b in batch_sizes if dtype == torch.float32 and name in sessions else ():
                    images = torch.randn((b, *size), generator=generator)
                    calls[f"{name}|onnx_b{b}"] = _onnx_call(sessions[name], images)
                    batches[f"{name}|onnx_b{b}"] = b
            measured = measure_group(calls, device, repeats, warmup, on_step=bar.update)
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
                        "images_per_s": None if not median_ms else batches[key] / median_ms * 1e3,
                        "runtime": "onnxruntime" if task.startswith("onnx") else "torch",
                        "peak_bytes": None if task.startswith("onnx") else m.peak_bytes,
                        "error": m.error,
                    }
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
            "baseline": baseline,
            "target": target,
            "train_step": "forward + cross-entropy + backward + AdamW step",
            "memory_method": "cuda max_memory_allocated"
            if device.type == "cuda"
            else "torch.profiler memory events (live tensor bytes)",
        },
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in loaded.items()},
        "skipped": skipped,
        "rows": rows,
        "checks": check_model_targets(rows, baseline, target),
    }


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


def check_model_targets(rows: Sequence[dict], baseline: str, target: str) -> list[dict]:
    """The issue's targets: ``target`` inference (batch 8, float32) images/s >= ``baseline``'s,
    and its float32 training step no slower."""
    index = {(r["model"], r["dtype"], r["task"]): r for r in rows}
    checks = []
    for task, label in (
        ("infer_b8", "inference images/s ratio (batch 8, float32)"),
        ("train", "training speed: inverse step-time ratio (float32)"),
    ):
        row, ref = index.get((target, "float32", task)), index.get((baseline, "float32", task))
        if not row or not ref or not row["median_ms"] or not ref["median_ms"]:
            continue
        speedup = ref["median_ms"] / row["median_ms"]
        checks.append(
            {
                "target": f"{target} / {baseline} {label}",
                "method": target,
                "value": speedup,
                "rule": ">=",
                "limit": 1.0,
                "passed": speedup >= 1.0,
            }
        )
    return checks
