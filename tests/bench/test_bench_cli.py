"""``nat bench`` runs end to end on tiny inputs and writes valid JSON and plots."""

import json
import platform

import pytest
import torch

from nat.cli import main

FAST = ["--repeats", "1", "--warmup", "0", "--no-progress"]


def test_bench_ops_quick_writes_json_with_ratios_to_wsa(tmp_path, capsys):
    path = tmp_path / "ops.json"
    assert main(["bench", "ops", "--quick", "--json", str(path), *FAST]) == 0
    result = json.loads(path.read_text())
    methods = {r["method"] for r in result["rows"]}
    wsa = [r for r in result["rows"] if r["method"] == "wsa"]
    assert {"na/torch", "unfold", "wsa", "sdpa"} <= methods
    assert all(r["ratio_to_wsa"] == 1.0 and len(r["times_ms"]) == 1 for r in wsa)
    assert result["machine"]["torch_threads"] >= 1 and result["command"].startswith("nat bench ops")
    assert "| wsa |" in capsys.readouterr().out


def test_bench_ops_selects_backends_shapes_and_modes(tmp_path):
    path = tmp_path / "ops.json"
    argv = [
        "bench",
        "ops",
        "--shapes",
        "quick9",
        "--backends",
        "torch",
        "--baselines",
        "wsa",
        "--modes",
        "forward",
        "--json",
        str(path),
        *FAST,
    ]
    assert main(argv) == 0
    rows = json.loads(path.read_text())["rows"]
    assert {(r["shape"], r["method"], r["mode"]) for r in rows} == {
        ("quick9", "na/torch", "forward"),
        ("quick9", "wsa", "forward"),
    }


def test_bench_models_quick_writes_json(tmp_path):
    path = tmp_path / "models.json"
    argv = [
        "bench",
        "models",
        "--quick",
        "--models",
        "test_vit",
        "--dtype",
        "float32",
        "--batch-sizes",
        "1",
        "--json",
        str(path),
        *FAST,
    ]
    assert main(argv) == 0
    result = json.loads(path.read_text())
    assert {(r["model"], r["task"]) for r in result["rows"]} == {
        ("test_vit", "infer_b1"),
        ("test_vit", "train"),
    }
    assert all(r["median_ms"] > 0 and r["peak_bytes"] > 0 for r in result["rows"])
    if platform.libc_ver()[0] == "glibc":  # the default pins malloc, and says so
        assert "--malloc pinned" in result["command"]
        assert result["machine"]["malloc"].startswith("glibc pinned")
        assert all(r["page_faults"] >= 0 for r in result["rows"])
    assert all(r["gemm_floor_share"] > 0 and r["flops"] > 0 for r in result["rows"])


@pytest.mark.slow
def test_bench_models_compile_adds_compiled_rows_with_compile_time(tmp_path, capsys):
    path = tmp_path / "models.json"
    argv = ["bench", "models", "--quick", "--models", "test_vit", "--dtype", "float32"]
    assert main([*argv, "--batch-sizes", "1", "--compile", "--json", str(path), *FAST]) == 0
    rows = {r["task"]: r for r in json.loads(path.read_text())["rows"]}
    assert set(rows) == {"infer_b1", "train", "compiled_infer_b1", "compiled_train"}
    for task in ("compiled_infer_b1", "compiled_train"):
        assert rows[task]["runtime"] == "compiled" and rows[task]["compile_s"] > 0
        assert rows[task]["flops"] == rows[task.removeprefix("compiled_")]["flops"]
    assert "train compile s" in capsys.readouterr().out


def test_bench_models_library_skips_models_it_cannot_build():
    from nat.bench.models import run_models

    result = run_models(
        ["test_vit", "not_a_model"],
        "cpu",
        [torch.float32],
        [1],
        1,
        None,
        1,
        0,
        "test_vit",
        progress=False,
    )
    assert {r["model"] for r in result["rows"]} == {"test_vit"}
    assert "not_a_model" in result["skipped"]


def test_bench_plot_writes_png(tmp_path):
    data, png, replot = tmp_path / "ops.json", tmp_path / "ops.png", tmp_path / "again.png"
    argv = [
        "bench",
        "ops",
        "--shapes",
        "quick9",
        "--backends",
        "torch",
        "--baselines",
        "wsa",
        "--json",
        str(data),
        "--plot",
        str(png),
        *FAST,
    ]
    assert main(argv) == 0
    assert main(["bench", "plot", str(data), "--out", str(replot)]) == 0
    assert png.read_bytes()[:8] == replot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_models_onnx_adds_onnxruntime_rows(tmp_path, capsys):
    path = tmp_path / "models.json"
    argv = ["bench", "models", "--quick", "--onnx", "--dtype", "float32", "--json", str(path)]
    assert main([*argv, *FAST]) == 0
    rows = [r for r in json.loads(path.read_text())["rows"] if r["runtime"] == "onnxruntime"]
    assert {(r["model"], r["task"]) for r in rows} == {
        ("test_vit", "onnx_b1"),
        ("test_vit", "onnx_b2"),
        ("test_convnext", "onnx_b1"),
        ("test_convnext", "onnx_b2"),
    }
    assert all(r["median_ms"] > 0 and r["peak_bytes"] is None for r in rows)
    assert "onnxruntime img/s b2" in capsys.readouterr().out


def test_bench_models_onnx_needs_float32_on_the_cpu(capsys):
    argv = ["bench", "models", "--quick", "--onnx", "--dtype", "bfloat16", *FAST]
    assert main(argv) == 2
    assert "onnx rows run in onnxruntime on the CPU" in capsys.readouterr().err


def test_bench_models_breakdown_adds_where_the_time_goes(tmp_path, capsys):
    path = tmp_path / "models.json"
    argv = ["bench", "models", "--quick", "--models", "test_vit", "--dtype", "float32"]
    assert main([*argv, "--batch-sizes", "1", "--breakdown", "--json", str(path), *FAST]) == 0
    rows = {r["task"]: r for r in json.loads(path.read_text())["rows"]}
    assert list(rows["train"]["breakdown"]["phases"]) == ["forward", "backward", "optimizer"]
    assert rows["infer_b1"]["breakdown"]["categories"]["matmul"]["calls"] > 0
    out = capsys.readouterr().out
    assert "where the time goes" in out and "| phase: optimizer |" in out


def test_bench_models_same_linear_gives_every_model_nats_linear(tmp_path, capsys):
    from nat.nn.linear import onednn_available

    path = tmp_path / "models.json"
    argv = ["bench", "models", "--quick", "--models", "test_vit", "--dtype", "float32"]
    assert main([*argv, "--batch-sizes", "1", "--same-linear", "--json", str(path), *FAST]) == 0
    result = json.loads(path.read_text())
    assert result["settings"]["same_linear"] is True
    assert "--same-linear" in result["command"]
    assert result["machine"]["cpu_linear"] in ("onednn", "blas")
    by_library = result["settings"]["gemm_rate_flops_by_library"]["float32"]
    assert set(by_library) == ({"torch", "onednn"} if onednn_available() else {"torch"})
    assert result["settings"]["gemm_rate_flops"]["float32"] == max(by_library.values())
    out = capsys.readouterr().out
    assert "float32 GEMM GFLOP/s by library: torch" in out
    assert "(every model's, --same-linear)" in out


def test_gemm_rate_refuses_an_unknown_library_or_a_dtype_onednn_does_not_run():
    from nat.bench.models import gemm_rate

    with pytest.raises(ValueError, match=r"library='mkl'; expected torch or onednn"):
        gemm_rate(torch.device("cpu"), torch.float32, size=8, repeats=1, library="mkl")
    with pytest.raises(ValueError, match=r"library='onednn' measures float32 on the CPU"):
        gemm_rate(torch.device("cpu"), torch.bfloat16, size=8, repeats=1, library="onednn")
