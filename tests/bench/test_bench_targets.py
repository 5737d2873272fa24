"""The issue's targets are judged from the medians: NA vs WSA per stage, NATTEN speedup, models."""

from nat.bench.models import check_model_targets
from nat.bench.ops import STAGE_SHAPES, Method, check_targets


def _row(shape, method, mode, ms, ratio, memory_ratio):
    return {
        "shape": shape,
        "method": method,
        "mode": mode,
        "median_ms": ms,
        "ratio_to_wsa": ratio,
        "memory_ratio_to_wsa": memory_ratio,
    }


def test_ops_targets_judge_the_best_backend_per_stage_and_the_natten_speedup():
    rows = [
        _row("stage1", "na/cpu", "forward", 1.0, 0.9, 1.05),
        _row("stage1", "na/cpu", "forward+backward", 4.0, 1.6, 0.5),
        _row("stage1", "natten", "forward", 150.0, 150.0, 40.0),
        _row("stage1", "na/torch", "forward", 50.0, 50.0, 0.1),
    ]
    methods = [
        Method(name, lambda shape, inputs: None, uses_rpb=True)
        for name in ("na/cpu", "na/torch", "natten", "wsa")
    ]
    checks = {c["target"]: c["passed"] for c in check_targets(rows, STAGE_SHAPES[:1], methods)}
    assert checks == {
        "stage1 forward time / WSA": True,
        "stage1 forward memory / WSA": True,
        "stage1 forward+backward time / WSA": False,
        "stage1 forward+backward memory / WSA": True,
        "stage1 forward speedup over NATTEN": True,
    }


def test_model_targets_compare_nat_tiny_with_swin_in_float32():
    def row(model, task, ms):
        return {"model": model, "dtype": "float32", "task": task, "median_ms": ms}

    rows = [
        row("nat_tiny", "infer_b8", 90.0),
        row("swin", "infer_b8", 100.0),
        row("nat_tiny", "train", 110.0),
        row("swin", "train", 100.0),
    ]
    checks = check_model_targets(rows, baseline="swin", target="nat_tiny")
    assert [c["passed"] for c in checks] == [True, False]
