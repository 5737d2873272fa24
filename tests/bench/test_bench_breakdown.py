"""``nat.bench.breakdown``: every operator of a call timed, counted and sorted into its kind."""

import pytest
import torch
from torch import nn

import nat
from nat.bench.breakdown import breakdown, category, mark
from nat.ops.dispatch import na_flops


def test_a_training_call_is_split_into_kinds_phases_and_flops():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16))
    x = torch.randn(4, 8)

    def call():
        loss = model(x).square().sum()
        mark("backward")
        loss.backward()

    result = breakdown(call, repeats=2)
    kinds = result["categories"]
    # addmm forward; the weight's gradient is one mm (the input needs none).
    assert kinds["matmul"]["calls"] == 2
    assert kinds["matmul"]["gflop"] * 1e9 == pytest.approx(2 * (2 * 4 * 8 * 16))
    assert kinds["activation"]["calls"] == 2 and kinds["normalisation"]["calls"] == 2
    assert list(result["phases"]) == ["forward", "backward"]
    assert sum(k["ms"] for k in kinds.values()) == pytest.approx(result["ops_ms"])
    assert 0 < result["ops_ms"] <= result["wall_ms"]
    assert result["ops"][0]["ms"] == max(op["ms"] for op in result["ops"])


def test_the_neighborhood_attention_ops_count_as_attention_with_their_flops():
    q = torch.randn(1, 6, 6, 2, 8, requires_grad=True)

    def call():
        nat.na2d(q, q, q, kernel_size=3, backend="torch").sum().backward()

    result = breakdown(call, repeats=1)
    ops = {op["op"]: op for op in result["ops"]}
    assert ops["nat.na_forward"]["category"] == ops["nat.na_backward"]["category"] == "attention"
    forward = na_flops(q.shape, q.shape, (3, 3))
    assert result["categories"]["attention"]["gflop"] * 1e9 == pytest.approx(3 * forward)


def test_operator_kinds():
    assert category("aten.bmm") == "attention" and category("nat.na_packed_backward") == "attention"
    assert category("aten.addmm") == "matmul" and category("aten.copy_") == "copies and layout"
    assert category("aten.add") == "other"


def test_mark_outside_a_breakdown_does_nothing_and_repeats_must_be_positive():
    mark("backward")
    with pytest.raises(ValueError, match="repeats=0"):
        breakdown(lambda: None, repeats=0)
