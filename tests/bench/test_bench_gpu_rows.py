"""The GPU rows of ``nat bench ops``: shapes, TFLOP/s, the ratio to dense SDPA, the correctness
column and the GPU targets, built from given measurements (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from nat import available_backends
from nat.bench import ops
from nat.bench.harness import Measurement
from nat.cli import main


def test_cuda_shapes_are_the_issues():
    shapes = {s.name: s for s in ops.shapes_by_name(["cuda"])}
    levels = [
        (s.batch, s.spatial, s.heads, s.kernel_size) for n, s in shapes.items() if "tiny" in n
    ]
    assert levels == [
        (64, (56, 56), 2, 7),
        (64, (28, 28), 4, 7),
        (64, (14, 14), 8, 7),
        (64, (7, 7), 16, 7),
    ]
    for name, dilation in (("k13-d1", 1), ("k13-d4", 4)):
        s = shapes[name]
        assert (s.spatial, s.heads, s.head_dim, s.kernel_size, s.dilation) == (
            (128, 128),
            8,
            64,
            13,
            dilation,
        )
    assert (shapes["3d-k7"].spatial, shapes["3d-k7"].kernel_size) == ((16, 64, 64), 7)


def test_rows_carry_tflops_by_the_cost_formula_and_the_ratio_to_sdpa():
    shape = ops.OpShape("s", 2, 8, 8, 2, 16, 3)
    methods = [ops.BASELINES["sdpa"], ops.Method("na/x", lambda s, i: None, True)]
    measured = {
        "sdpa|forward": Measurement([1e-3]),
        "na/x|forward": Measurement([1e-4]),
    }
    rows = ops._shape_rows(shape, methods, ["forward"], measured, {"na/x": (1e-6, "reference")})
    by_method = {r["method"]: r for r in rows}
    dense = 2 * 2 * 2 * 64**2 * 2 * 16
    na = 2 * 2 * 2 * 64 * 9 * 2 * 16
    assert by_method["sdpa"]["tflops"] == pytest.approx(dense / 1e-3 / 1e12)
    assert by_method["na/x"]["tflops"] == pytest.approx(na / 1e-4 / 1e12)
    assert by_method["na/x"]["tflops_ratio_to_sdpa"] == pytest.approx((na / 1e-4) / (dense / 1e-3))
    assert by_method["na/x"]["max_abs_error"] == 1e-6


def test_gpu_targets_judge_triton_against_sdpa_and_flex():
    def row(method, mode, ms, ratio):
        return {
            "shape": "k13-d1",
            "method": method,
            "mode": mode,
            "median_ms": ms,
            "tflops_ratio_to_sdpa": ratio,
        }

    rows = [
        row("na/triton", "forward", 1.0, 0.6),
        row("na/flex", "forward", 2.0, 0.3),
        row("na/triton", "forward+backward", 3.0, 0.2),
        row("na/flex", "forward+backward", 2.5, 0.25),
    ]
    checks = {c["target"]: c["passed"] for c in ops.check_gpu_targets(rows, ops.CUDA_SHAPES)}
    assert checks == {
        "k13-d1 forward TFLOP/s / dense SDPA's": True,
        "k13-d1 forward speedup over FlexAttention NA": True,
        "k13-d1 forward+backward TFLOP/s / dense SDPA's": False,
        "k13-d1 forward+backward speedup over FlexAttention NA": False,
    }


@pytest.mark.parametrize(("limit", "against"), [(2**28, "reference"), (0, "torch")])
def test_forward_error_checks_against_the_reference_where_it_fits(monkeypatch, limit, against):
    monkeypatch.setattr(ops, "CHECK_MAX_SCORES", limit)
    shape = ops.OpShape("s", 2, 9, 8, 2, 8, 3, dilation=2)
    inputs = ops._make_inputs(shape, torch.device("cpu"), torch.float32, seed=0)
    method = ops._na_method(available_backends("cpu")[0])
    error, checked = ops.forward_error(method, shape, inputs)
    assert checked == against
    assert error < 1e-5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
@pytest.mark.parametrize("benchmark", ["ops", "models"])
def test_bench_on_cuda_without_a_gpu_is_a_one_line_error(capsys, benchmark):
    assert main(["bench", benchmark, "--device", "cuda", "--quick"]) != 0
    err = capsys.readouterr().err.strip()
    assert err == "nat bench: error: --device=cuda: CUDA is not available"


def test_run_ops_takes_3d_and_dilated_shapes_with_the_baselines_that_apply():
    shapes = [
        ops.OpShape("vol", 1, 6, 6, 2, 8, 3, depth=4),
        ops.OpShape("dil", 1, 9, 9, 2, 8, 3, dilation=2),
    ]
    result = ops.run_ops(
        shapes, repeats=1, warmup=0, modes=["forward"], progress=False, methods=[
            ops._na_method("torch"), *(ops.BASELINES[n] for n in ("unfold", "wsa", "sdpa"))
        ],
    )  # fmt: skip
    methods = {(r["shape"], r["method"]) for r in result["rows"]}
    assert methods == {
        ("vol", "na/torch"),
        ("vol", "sdpa"),
        ("dil", "na/torch"),
        ("dil", "wsa"),
        ("dil", "sdpa"),
    }
    na_rows = [r for r in result["rows"] if r["method"] == "na/torch"]
    assert all(r["error"] is None and r["max_abs_error"] < 1e-5 for r in na_rows)
