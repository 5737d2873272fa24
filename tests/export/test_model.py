"""``export_model``: writes the file, runs it, reports how far it is from eager mode."""

from __future__ import annotations

import pytest
import torch

from nat.export import TOLERANCE, export_model, largest_difference, min_dynamic_size, run_onnx

from .models import nat_digits, tiny_backbone, tiny_dinat


def test_onnx_classifier_with_dynamic_batch(tmp_path):
    model = nat_digits()
    result = export_model(model, tmp_path / "digits.onnx", "onnx", batch="dynamic")
    assert result.ok and result.max_rel_diff <= TOLERANCE
    assert result.checked_batches == (1, 3)
    assert result.opset is not None
    x = torch.randn(5, 3, 32, 32)
    (got,) = run_onnx(result.path, [x.numpy()])
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-5)


def test_onnx_backbone_at_a_non_square_size(tmp_path):
    model = tiny_backbone()
    result = export_model(model, tmp_path / "bb.onnx", "onnx", input_size=(40, 36), batch=2)
    assert result.ok
    assert (result.input_shape, result.checked_batches) == ((2, 3, 40, 36), (2,))
    outputs = run_onnx(result.path, [torch.randn(2, 3, 40, 36).numpy()])
    assert [o.shape for o in outputs] == [(2, 16, 10, 9), (2, 32, 5, 5)]


def test_exported_program_of_dinat(tmp_path):
    result = export_model(
        tiny_dinat(), tmp_path / "dinat.pt2", "exported-program", (48, 40), batch="dynamic"
    )
    assert result.ok and result.max_abs_diff < 1e-6
    assert result.opset is None


def test_min_dynamic_size_is_where_no_block_pads():
    # nat_digits: kernel 3 on three levels; level 2 sees ceil(H / 16) rows, which must be >= 3.
    assert min_dynamic_size(nat_digits()) == (33, 33)
    # tiny DiNAT: dilation 2 at level 0 (ceil(H / 4) >= 6), kernel 3 at level 1 (ceil(H / 8) >= 3)
    assert min_dynamic_size(tiny_dinat()) == (21, 21)


def test_dynamic_size_exported_program_is_checked_at_the_smallest_size(tmp_path):
    result = export_model(
        tiny_backbone(), tmp_path / "bb.pt2", "exported-program", (40, 36), dynamic_size=True
    )
    assert result.ok
    assert (result.min_size, result.checked_sizes) == ((21, 21), ((40, 36), (21, 21)))


def test_the_opset_is_the_one_asked_for(tmp_path):
    result = export_model(nat_digits(), tmp_path / "d.onnx", "onnx", opset=18)
    assert result.opset == 18


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(format="tflite"), "format='tflite' must be one of onnx, exported-program"),
        (dict(batch=0), "batch=0 must be an integer >= 1 or 'dynamic'"),
        (dict(batch="any"), "batch='any'"),
        (dict(format="exported-program", opset=18), "opset=18 only applies to format='onnx'"),
        (dict(opset=17), "opset=17 must be an integer >= 18"),
        (dict(input_size=(32,)), r"input_size=\(32,\) must be two integers"),
        (dict(dynamic_size=True), "dynamic_size=True needs format='exported-program'"),
    ],
)
def test_bad_arguments_are_refused_before_writing(kwargs, message, tmp_path):
    path = tmp_path / "out.onnx"
    with pytest.raises(ValueError, match=message):
        export_model(nat_digits(), path, **kwargs)
    assert not path.exists()


def test_a_model_without_a_config_needs_an_input_size(tmp_path):
    with pytest.raises(ValueError, match="input_size=None: NATBackbone has no default input size"):
        export_model(tiny_backbone(), tmp_path / "bb.onnx")


def test_largest_difference_is_relative_to_the_largest_reference():
    ref = [torch.tensor([1.0, -4.0]), torch.tensor([2.0])]
    out = [torch.tensor([1.5, -4.0]), torch.tensor([2.0])]
    assert largest_difference(out, ref) == (0.5, 0.125)
