"""mmsegmentation's UPerNet keys: the published checkpoints' names and shapes, loading, round
trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nat.engine import CheckpointError
from nat.files import atomic_save
from nat.tasks.segmentation import from_mmseg, load_upernet_weights, to_mmseg, upernet

from .conftest import tiny_upernet

# UPerNet-NAT-Tiny in mmsegmentation (UPerHead channels 512, FCNHead on in_index 2 with 256
# channels, 150 classes): these keys and shapes are what the published checkpoint holds.
MMSEG_TINY = {
    "backbone.levels.2.blocks.17.attn.rpb": (8, 13, 13),
    "backbone.norm3.weight": (512,),
    "decode_head.psp_modules.3.1.conv.weight": (512, 512, 1, 1),
    "decode_head.psp_modules.3.1.bn.running_var": (512,),
    "decode_head.bottleneck.conv.weight": (512, 512 + 4 * 512, 3, 3),
    "decode_head.lateral_convs.0.conv.weight": (512, 64, 1, 1),
    "decode_head.lateral_convs.2.conv.weight": (512, 256, 1, 1),
    "decode_head.lateral_convs.2.bn.num_batches_tracked": (),
    "decode_head.fpn_convs.0.conv.weight": (512, 512, 3, 3),
    "decode_head.fpn_bottleneck.conv.weight": (512, 4 * 512, 3, 3),
    "decode_head.fpn_bottleneck.bn.bias": (512,),
    "decode_head.conv_seg.weight": (150, 512, 1, 1),
    "decode_head.conv_seg.bias": (150,),
    "auxiliary_head.convs.0.conv.weight": (256, 256, 3, 3),
    "auxiliary_head.convs.0.bn.weight": (256,),
    "auxiliary_head.conv_seg.weight": (150, 256, 1, 1),
}


def test_nat_tiny_maps_to_the_published_mmseg_names_and_shapes() -> None:
    with torch.device("meta"):
        model = upernet("nat_tiny", 150)
    theirs = {k: tuple(v.shape) for k, v in to_mmseg(model.state_dict()).items()}
    assert {k: theirs.get(k) for k in MMSEG_TINY} == MMSEG_TINY
    heads = {k.split(".")[0] for k in theirs}
    assert heads == {"backbone", "decode_head", "auxiliary_head"}
    lateral = sorted(
        k
        for k in theirs
        if k.startswith("decode_head.lateral_convs.") and k.endswith("conv.weight")
    )
    assert len(lateral) == 3


def test_round_trip_is_the_identity(model) -> None:
    ours = model.state_dict()
    back = from_mmseg(to_mmseg(ours))
    assert list(back) == list(ours) and all(back[k] is ours[k] for k in ours)


def test_an_mmcv_checkpoint_loads_and_computes_the_same(model, tmp_path: Path) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    path = tmp_path / "upernet_mmseg.pth"
    atomic_save(
        {"meta": {"CLASSES": ["a", "b", "c"]}, "state_dict": to_mmseg(model.state_dict())}, path
    )
    loaded = tiny_upernet()
    load_upernet_weights(loaded, path)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_a_checkpoint_of_another_shape_is_one_error_naming_the_file(model, tmp_path: Path) -> None:
    path = tmp_path / "five_classes.pth"
    atomic_save({"state_dict": to_mmseg(tiny_upernet(num_classes=5).state_dict())}, path)
    with pytest.raises(CheckpointError, match=r"five_classes.pth.*shape mismatches.*classifier"):
        load_upernet_weights(model, path)


def test_a_classification_checkpoint_is_refused(model, tmp_path: Path) -> None:
    path = tmp_path / "classifier.pth"
    atomic_save({"head.weight": torch.zeros(3, 4)}, path)
    with pytest.raises(CheckpointError, match=r"classifier.pth.*no decode_head"):
        load_upernet_weights(model, path)
