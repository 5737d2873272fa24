"""The NA op lowered to standard ONNX operators: exact for every window rule, in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import nat
from nat.export import export_onnx, export_program, run_onnx
from nat.export.na_onnx import tile_table
from nat.ops.spec import check_window_args, neighbor_table

MODULES = {
    1: nat.NeighborhoodAttention1D,
    2: nat.NeighborhoodAttention2D,
    3: nat.NeighborhoodAttention3D,
}

# (spatial size, module keywords): dilation, stride, causal masking, even kernels, RPB, and
# inputs smaller than the window (padded by the module, then dense attention).
CASES = [
    ((23,), dict(kernel_size=5, dilation=2)),
    ((17,), dict(kernel_size=4, stride=2, is_causal=True, rel_pos_bias=False)),
    ((10,), dict(kernel_size=3, stride=3, rel_pos_bias=False)),
    ((11, 9), dict(kernel_size=3, dilation=(2, 1))),
    ((9, 8), dict(kernel_size=(4, 3), stride=(2, 1), is_causal=(True, False), rel_pos_bias=False)),
    ((7, 13), dict(kernel_size=(2, 5), dilation=(1, 2), stride=(1, 3), rel_pos_bias=False)),
    ((3, 4), dict(kernel_size=5)),
    ((5, 7, 6), dict(kernel_size=3, dilation=(1, 2, 1), is_causal=(True, False, False),
                     rel_pos_bias=False)),
    ((4, 6, 5), dict(kernel_size=(2, 3, 3), stride=2, rel_pos_bias=False)),
    ((4, 5, 6), dict(kernel_size=3)),
]  # fmt: skip


def _module(ndim: int, kwargs: dict) -> nn.Module:
    torch.manual_seed(0)
    module = MODULES[ndim](dim=8, num_heads=2, **kwargs).eval()
    if module.rpb is not None:
        # Published RPB tables are small; a large one makes a wrong RPB index visible.
        with torch.no_grad():
            module.rpb.normal_()
    return module


def _assert_standard_ops(path) -> None:
    model = onnx.load(str(path))
    domains = {node.domain for node in model.graph.node} | {f.domain for f in model.functions}
    assert domains <= {"", "ai.onnx"}, domains


@pytest.mark.parametrize(("spatial", "kwargs"), CASES, ids=[str(c) for c in CASES])
def test_module_runs_in_onnxruntime_like_eager(spatial, kwargs, tmp_path):
    module = _module(len(spatial), kwargs)
    example = torch.randn(2, *spatial, 8)
    path = export_onnx(module, example, tmp_path / "na.onnx", dynamic_batch=True)
    _assert_standard_ops(path)
    for batch in (1, 3):
        x = torch.randn(batch, *spatial, 8)
        (got,) = run_onnx(path, [x.numpy()])
        with torch.no_grad():
            expected = module(x)
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)


class _RawOp(nn.Module):
    """Calls the registered op directly and returns its log-sum-exp too."""

    def forward(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, lse = torch.ops.nat.na_forward(
            q, q * 0.5, q.flip(-1), None, [3, 4], [1, 2], [2, 1], [False, True], 0.3, "torch", True
        )
        return out, lse


def test_log_sum_exp_is_lowered_when_the_op_returns_it(tmp_path):
    q = torch.randn(2, 9, 8, 2, 4)
    path = export_onnx(_RawOp(), q, tmp_path / "raw.onnx", dynamic_batch=False)
    got = [torch.from_numpy(t) for t in run_onnx(path, [q.numpy()])]
    expected = _RawOp()(q)
    assert expected[1].shape == (2, 2, 72)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


class _Unpadded(nn.Module):
    """Functional NA with no padding: a 7x7 window needs an input of at least 7x7."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nat.na2d(x, x, x, kernel_size=7)


def test_input_smaller_than_the_window_fails_at_export_and_writes_nothing(tmp_path):
    path = tmp_path / "small.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(ValueError, match=r"cannot export .*\(2, 5, 5, 2, 4\).*kernel_size"):
        export_onnx(_Unpadded(), torch.randn(2, 5, 5, 2, 4), path)
    assert path.read_bytes() == b"previous"


def test_dynamic_spatial_size_is_refused_with_the_reason(tmp_path):
    x = torch.randn(2, 9, 9, 2, 4)
    height = torch.export.Dim("height", min=7, max=32)
    with torch.no_grad():
        program = torch.export.export(_Unpadded(), (x,), dynamic_shapes=({1: height},))
    with pytest.raises(ValueError, match="every axis but the batch to be static"):
        export_onnx(program, x, tmp_path / "dyn.onnx")


def test_exported_program_keeps_one_na_node_per_module():
    module = _module(2, dict(kernel_size=3, dilation=(2, 1)))
    program = export_program(module, torch.randn(2, 11, 9, 8))
    assert len([n for n in program.graph.nodes if "na_forward" in str(n.target)]) == 1


@pytest.mark.parametrize(("spatial", "kwargs"), CASES, ids=[str(c) for c in CASES])
def test_each_tile_row_holds_exactly_the_querys_neighbours(spatial, kwargs):
    module = _module(len(spatial), kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k != "rel_pos_bias"}
    # The module pads inputs smaller than its window to the window.
    spatial = tuple(
        max(s, k * d) for s, k, d in zip(spatial, module.kernel_size, module.dilation, strict=True)
    )
    params = check_window_args(spatial, **kwargs)
    nbr, valid, bias = neighbor_table(spatial, params, torch.device("cpu"))
    tiles = tile_table(spatial, params)
    for n in range(nbr.shape[0]):
        t, i = divmod(int(tiles.position[n]), tiles.queries.shape[1])
        assert tiles.queries[t, i] == n
        row = tiles.bias[t, i]
        got = {(int(tiles.keys[t, j]), int(row[j])) for j in np.nonzero(row != tiles.rpb_size)[0]}
        ok = slice(None) if valid is None else valid[n]
        assert got == set(zip(nbr[n][ok].tolist(), bias[n][ok].tolist(), strict=True))


def test_tiles_read_a_halo_not_a_copy_per_neighbour():
    params = check_window_args((56, 56), 7)
    tiles = tile_table((56, 56), params)
    assert tiles.queries.shape == (14 * 14, 4 * 4)
    assert tiles.keys.shape == (14 * 14, 10 * 10)
