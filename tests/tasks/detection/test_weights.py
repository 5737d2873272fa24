"""mmdetection checkpoints: synthetic ones with mmdetection's key names and shapes (written out
here from mmdetection's module names, independently of the mapping) load into the detectors,
every value lands where it belongs, and the conversion round-trips."""

from __future__ import annotations

import pytest
import torch

from nat.files import CheckpointError
from nat.tasks.detection import (
    DetectConfig,
    create_detector,
    from_mmdet,
    load_detector_weights,
    mask_rcnn,
    to_mmdet,
)

from ...models.synthetic import published_shapes
from .tiny import TINY_SETTINGS

COCO = 80  # mmdetection's num_classes (no background)


def _mmdet_shapes(
    architecture: str, backbone: dict[str, tuple[int, ...]], levels: list[int], c: int, fc: int
) -> dict[str, tuple[int, ...]]:
    """mmdetection 2.x key -> shape for a NAT Mask R-CNN / Cascade Mask R-CNN (FPN ``c``
    channels, box fc ``fc`` wide, COCO's 80 classes)."""
    shapes = {f"backbone.{k}": v for k, v in backbone.items()}
    for i, channels in enumerate(levels):
        shapes |= {
            f"neck.lateral_convs.{i}.conv.weight": (c, channels, 1, 1),
            f"neck.lateral_convs.{i}.conv.bias": (c,),
            f"neck.fpn_convs.{i}.conv.weight": (c, c, 3, 3),
            f"neck.fpn_convs.{i}.conv.bias": (c,),
        }
    shapes |= {
        "rpn_head.rpn_conv.weight": (c, c, 3, 3),
        "rpn_head.rpn_conv.bias": (c,),
        "rpn_head.rpn_cls.weight": (3, c, 1, 1),
        "rpn_head.rpn_cls.bias": (3,),
        "rpn_head.rpn_reg.weight": (12, c, 1, 1),
        "rpn_head.rpn_reg.bias": (12,),
    }
    stages = [""] if architecture == "mask_rcnn" else [".0", ".1", ".2"]
    for s in stages:
        box, mask = f"roi_head.bbox_head{s}", f"roi_head.mask_head{s}"
        if architecture == "mask_rcnn":
            shapes |= {
                f"{box}.shared_fcs.0.weight": (fc, c * 49),
                f"{box}.shared_fcs.0.bias": (fc,),
                f"{box}.shared_fcs.1.weight": (fc, fc),
                f"{box}.shared_fcs.1.bias": (fc,),
            }
        else:
            for i in range(4):
                shapes[f"{box}.shared_convs.{i}.conv.weight"] = (c, c, 3, 3)
                for p in ("weight", "bias", "running_mean", "running_var"):
                    shapes[f"{box}.shared_convs.{i}.bn.{p}"] = (c,)
                shapes[f"{box}.shared_convs.{i}.bn.num_batches_tracked"] = ()
            shapes |= {
                f"{box}.shared_fcs.0.weight": (fc, c * 49),
                f"{box}.shared_fcs.0.bias": (fc,),
            }
        shapes |= {
            f"{box}.fc_cls.weight": (COCO + 1, fc),
            f"{box}.fc_cls.bias": (COCO + 1,),
            f"{box}.fc_reg.weight": (4 * COCO, fc),
            f"{box}.fc_reg.bias": (4 * COCO,),
            f"{mask}.upsample.weight": (c, c, 2, 2),
            f"{mask}.upsample.bias": (c,),
            f"{mask}.conv_logits.weight": (COCO, c, 1, 1),
            f"{mask}.conv_logits.bias": (COCO,),
        }
        for i in range(4):
            shapes[f"{mask}.convs.{i}.conv.weight"] = (c, c, 3, 3)
            shapes[f"{mask}.convs.{i}.conv.bias"] = (c,)
    return shapes


def _random(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        k: torch.randint(0, 5, s)
        if k.endswith("num_batches_tracked")
        else torch.randn(s, generator=g)
        for k, s in shapes.items()
    }


@pytest.fixture(scope="module")
def nat_tiny_mask_rcnn():
    """The published NAT-Tiny Mask R-CNN's keys and shapes (backbone from the spec's key list)."""
    shapes = _mmdet_shapes(
        "mask_rcnn", published_shapes("nat_tiny_backbone"), [64, 128, 256, 512], 256, 1024
    )
    return _random(shapes)


def _tiny_cascade() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    config = DetectConfig(**TINY_SETTINGS)
    model = create_detector("cascade_mask_rcnn", "nat_mini", COCO + 1, **config.model_kwargs())
    backbone = {
        k.removeprefix("backbone.body."): tuple(v.shape)
        for k, v in model.state_dict().items()
        if k.startswith("backbone.body.")
    }
    channels = [16, 32, 64, 128]
    return model, _random(_mmdet_shapes("cascade_mask_rcnn", backbone, channels, 32, 64))


def test_published_mask_rcnn_keys_load_into_nat_tiny_mask_rcnn(nat_tiny_mask_rcnn, tmp_path):
    path = tmp_path / "nat_tiny_maskrcnn.pth"
    torch.save({"meta": {"epoch": 36}, "state_dict": nat_tiny_mask_rcnn}, path)
    model = mask_rcnn("nat_tiny", COCO + 1)
    assert load_detector_weights(model, path) == "mmdetection"
    sd, mm = model.state_dict(), nat_tiny_mask_rcnn
    head = "roi_heads.box_predictor"
    assert torch.equal(
        sd[f"{head}.cls_score.weight"][0], mm["roi_head.bbox_head.fc_cls.weight"][-1]
    )
    assert torch.equal(
        sd[f"{head}.cls_score.weight"][1:], mm["roi_head.bbox_head.fc_cls.weight"][:-1]
    )
    assert torch.equal(sd[f"{head}.bbox_pred.weight"][4:], mm["roi_head.bbox_head.fc_reg.weight"])
    assert torch.equal(
        sd["roi_heads.mask_predictor.mask_fcn_logits.weight"][1:],
        mm["roi_head.mask_head.conv_logits.weight"],
    )
    assert torch.equal(sd["rpn.head.cls_logits.weight"], mm["rpn_head.rpn_cls.weight"])
    assert torch.equal(
        sd["backbone.fpn.inner_blocks.3.0.weight"], mm["neck.lateral_convs.3.conv.weight"]
    )
    assert torch.equal(
        sd["roi_heads.box_head.fc7.weight"], mm["roi_head.bbox_head.shared_fcs.1.weight"]
    )
    assert torch.equal(sd["backbone.body.norm3.weight"], mm["backbone.norm3.weight"])


def test_mask_rcnn_conversion_round_trips(nat_tiny_mask_rcnn):
    back = to_mmdet(from_mmdet(nat_tiny_mask_rcnn, "mask_rcnn"), "mask_rcnn")
    assert back.keys() == nat_tiny_mask_rcnn.keys()
    assert all(torch.equal(back[k], v) for k, v in nat_tiny_mask_rcnn.items())


def test_cascade_keys_load_and_round_trip(tmp_path):
    model, mm = _tiny_cascade()
    path = tmp_path / "cascade.pth"
    torch.save({"meta": {}, "state_dict": mm}, path)
    assert load_detector_weights(model, path) == "mmdetection"
    sd = model.state_dict()
    stage = "roi_heads.stages.2"
    assert torch.equal(
        sd[f"{stage}.box_head.3.1.running_var"],
        mm["roi_head.bbox_head.2.shared_convs.3.bn.running_var"],
    )
    assert torch.equal(
        sd[f"{stage}.box_head.5.weight"], mm["roi_head.bbox_head.2.shared_fcs.0.weight"]
    )
    assert torch.equal(
        sd[f"{stage}.mask_head.1.0.weight"], mm["roi_head.mask_head.2.convs.1.conv.weight"]
    )
    back = to_mmdet(from_mmdet(mm, "cascade_mask_rcnn"), "cascade_mask_rcnn")
    assert all(torch.equal(back[k], v) for k, v in mm.items()) and back.keys() == mm.keys()


def test_class_probabilities_match_mmdetection_convention(nat_tiny_mask_rcnn):
    """softmax over mmdetection's logits (background last) == ours (background first), permuted."""
    ours = from_mmdet(nat_tiny_mask_rcnn, "mask_rcnn")
    x = torch.randn(5, 1024)
    w, b = (
        nat_tiny_mask_rcnn["roi_head.bbox_head.fc_cls.weight"],
        nat_tiny_mask_rcnn["roi_head.bbox_head.fc_cls.bias"],
    )
    theirs = torch.softmax(x @ w.T + b, -1)
    mine = torch.softmax(
        x @ ours["roi_heads.box_predictor.cls_score.weight"].T
        + ours["roi_heads.box_predictor.cls_score.bias"],
        -1,
    )
    assert torch.allclose(mine[:, 0], theirs[:, -1]) and torch.allclose(mine[:, 1:], theirs[:, :-1])


def test_a_softmax_rpn_becomes_one_sigmoid_logit_per_anchor():
    g = torch.Generator().manual_seed(1)
    softmax_cls = {"rpn_head.rpn_cls.weight": torch.randn(6, 8, 1, 1, generator=g),
                   "rpn_head.rpn_cls.bias": torch.randn(6, generator=g)}  # fmt: skip
    converted = from_mmdet(softmax_cls, "mask_rcnn")
    x = torch.randn(2, 8, 5, 5)
    pairs = torch.nn.functional.conv2d(
        x, softmax_cls["rpn_head.rpn_cls.weight"], softmax_cls["rpn_head.rpn_cls.bias"]
    )
    foreground = torch.softmax(pairs.unflatten(1, (3, 2)), 2)[:, :, 0]
    sigmoid = torch.sigmoid(
        torch.nn.functional.conv2d(
            x, converted["rpn.head.cls_logits.weight"], converted["rpn.head.cls_logits.bias"]
        )
    )
    assert torch.allclose(sigmoid, foreground, atol=1e-6)


def test_a_key_of_another_architecture_is_named():
    with pytest.raises(CheckpointError, match=r"roi_head\.bbox_head\.0\.shared_convs"):
        from_mmdet({"roi_head.bbox_head.0.shared_convs.0.conv.weight": torch.zeros(1)}, "mask_rcnn")


def test_a_checkpoint_of_the_wrong_size_names_the_file(nat_tiny_mask_rcnn, tmp_path):
    path = tmp_path / "maskrcnn.pth"
    torch.save({"state_dict": nat_tiny_mask_rcnn}, path)
    model = create_detector("mask_rcnn", "nat_tiny", 11)
    with pytest.raises(CheckpointError, match=r"maskrcnn\.pth"):
        load_detector_weights(model, path)
