"""NATBackbone: mm* layout, channels-first maps at strides 4..32, out_indices, frozen stages."""

from __future__ import annotations

import pytest
import timm
import torch

import nat  # noqa: F401
from nat.models import NATBackbone, load_pretrained

TINY = dict(embed_dim=16, mlp_ratio=2, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))


@pytest.mark.parametrize("size", [(64, 64), (45, 71), (17, 9)])
def test_feature_maps_at_strides_4_to_32(size):
    backbone = NATBackbone(**TINY).eval()
    with torch.no_grad():
        outs = backbone(torch.randn(2, 3, *size))
    h, w = size
    expected = [(2, 16 * 2**i, -(-h // 2 ** (i + 2)), -(-w // 2 ** (i + 2))) for i in range(4)]
    assert [tuple(o.shape) for o in outs] == expected


def test_feature_info_describes_the_outputs():
    backbone = NATBackbone(**TINY, out_indices=(1, 3))
    assert backbone.out_channels == backbone.feature_info.channels() == [32, 128]
    assert backbone.strides == backbone.feature_info.reduction() == [8, 32]
    assert [k for k in backbone.state_dict() if k.startswith("norm")] == [
        "norm1.weight", "norm1.bias", "norm3.weight", "norm3.bias",
    ]  # fmt: skip


def test_outputs_are_normalised_pre_downsample_features():
    backbone = NATBackbone(**TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        tokens = backbone.patch_embed(x)
        level0 = backbone.levels[0].forward_blocks(tokens)
        expected = backbone.norm0(level0).permute(0, 3, 1, 2)
        assert torch.allclose(backbone(x)[0], expected)


def test_frozen_stages_freeze_stem_and_first_levels():
    backbone = NATBackbone(**TINY, frozen_stages=2).train()
    frozen = [n for n, p in backbone.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("patch_embed.", "levels.0.", "levels.1.")) for n in frozen)
    assert not backbone.levels[1].training and backbone.levels[2].training


def test_invalid_out_indices_are_named():
    with pytest.raises(ValueError, match=r"out_indices=\(4,\) must be non-empty level indices"):
        NATBackbone(**TINY, out_indices=(4,))


def test_classification_checkpoint_loads_into_backbone():
    classifier = timm.create_model("nat_mini")
    backbone = NATBackbone(embed_dim=64, mlp_ratio=3, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16))
    result = load_pretrained(backbone, classifier.state_dict())
    assert sorted(result.missing_keys) == sorted(
        f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")
    )
    assert torch.equal(
        backbone.levels[2].blocks[0].attn.qkv.weight, classifier.levels[2].blocks[0].attn.qkv.weight
    )


def test_timm_features_only_is_the_backbone():
    model = timm.create_model("nat_mini", features_only=True, out_indices=(0, 2))
    assert isinstance(model, NATBackbone)
    assert model.feature_info.channels() == [64, 256]
    assert model.feature_info.reduction() == [4, 16]
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, 50, 50))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 13, 13), (1, 256, 4, 4)]


def test_timm_features_only_with_three_levels():
    model = timm.create_model("nat_digits", features_only=True)
    assert model.feature_info.reduction() == [4, 8, 16]


def test_gradient_checkpointing_gives_the_same_gradients():
    backbone = NATBackbone(**TINY, drop_path_rate=0.0).train()
    x = torch.randn(1, 3, 32, 32)
    sum(o.sum() for o in backbone(x)).backward()
    plain = backbone.levels[1].blocks[0].attn.qkv.weight.grad.clone()
    backbone.zero_grad()
    backbone.set_grad_checkpointing(True)
    sum(o.sum() for o in backbone(x)).backward()
    assert torch.allclose(backbone.levels[1].blocks[0].attn.qkv.weight.grad, plain, atol=1e-6)


def test_torchvision_mask_rcnn_with_fpn_slots_in():
    from collections import OrderedDict

    from torchvision.models.detection import MaskRCNN
    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    class BackboneWithFPN(torch.nn.Module):
        def __init__(self, body: NATBackbone) -> None:
            super().__init__()
            self.body = body
            self.fpn = FeaturePyramidNetwork(body.out_channels, 32, LastLevelMaxPool())
            self.out_channels = 32

        def forward(self, x):
            return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))

    detector = MaskRCNN(
        BackboneWithFPN(NATBackbone(**TINY)), num_classes=3, min_size=64, max_size=96
    )
    images = [torch.rand(3, 64, 90)]
    targets = [
        dict(
            boxes=torch.tensor([[4.0, 6.0, 40.0, 50.0]]),
            labels=torch.tensor([1]),
            masks=torch.zeros(1, 64, 90, dtype=torch.uint8),
        )
    ]
    losses = detector.train()(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_mask"} <= set(losses)
    sum(losses.values()).backward()
    assert detector.backbone.body.levels[3].blocks[0].attn.rpb.grad is not None


def test_segmentation_models_pytorch_encoder():
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = smp.UPerNet("tu-nat_mini", encoder_weights=None, classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
