"""The GPU check script's parts that run without a GPU: its correctness rows and its refusal."""

from __future__ import annotations

import pytest
import torch

from nat.bench import gpu_check
from nat.ops.spec import check_na_args


def test_correctness_rows_compare_a_backend_with_the_reference():
    problems = (
        gpu_check.CheckProblem("tiny", (6, 7), (3, 3), dilation=(2, 1), rpb=True, heads=2,
                               heads_kv=1, head_dim=4, head_dim_v=3, batch=1),
    )  # fmt: skip
    rows = gpu_check.check_correctness("cpu", ["torch"], (torch.float32,), problems)
    assert [(r["problem"], r["backend"], r["dtype"], r["passed"]) for r in rows] == [
        ("tiny", "torch", "float32", True)
    ]
    assert rows[0]["max_rel_error"] < 1e-5


@pytest.mark.parametrize("problem", gpu_check.PROBLEMS, ids=lambda p: p.name)
def test_every_check_problem_is_a_valid_call(problem):
    q, k, v, rpb = problem.tensors()
    check_na_args(q, k, v, len(problem.spatial), rpb=rpb, **problem.window())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_gpu_check_without_a_gpu_is_a_one_line_error(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "gpu_check: error: no CUDA device is available\n"
