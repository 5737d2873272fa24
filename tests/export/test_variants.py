"""Every registered NAT/DiNAT variant and the backbone, in onnxruntime within 1e-4 (slow)."""

from __future__ import annotations

import pytest
import timm
import torch

from nat.export import TOLERANCE, export_model

VARIANTS = timm.list_models(["nat_*", "dinat_*"])


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_variant_in_onnxruntime(name, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(name)
    result = export_model(model, tmp_path / f"{name}.onnx", "onnx", batch="dynamic")
    assert result.max_rel_diff <= TOLERANCE, result


@pytest.mark.slow
def test_backbone_in_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("dinat_tiny", features_only=True)
    result = export_model(model, tmp_path / "backbone.onnx", "onnx", batch="dynamic")
    assert result.max_rel_diff <= TOLERANCE, result
