"""Checkpoint formats: each published layout, built synthetically from the key lists, loads
strictly; conversions round-trip to the same logits; unsafe or mismatched files are refused."""

from __future__ import annotations

import json
import pathlib

import pytest
import safetensors.torch
import timm
import torch
from torch import nn

import nat
from nat.files import CheckpointError
from nat.models import (
    NATBackbone,
    convert_checkpoint,
    detect_layout,
    identify_variant,
    load_model,
    load_pretrained,
    load_state_dict_strict,
)

from .synthetic import published_shapes, synthetic_state_dict, to_hf


@pytest.fixture(scope="module")
def mini_sd():
    return synthetic_state_dict("nat_mini")


@pytest.fixture(scope="module")
def mini_model():
    return timm.create_model("nat_mini")


def assert_loaded(model, state_dict):
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state_dict.items())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.1}, "epoch": 3},
        lambda sd: {"meta": {"mmcls_version": "0.1", "epoch": 300}, "state_dict": sd},
        lambda sd: {"module." + k: v for k, v in sd.items()},
    ],
    ids=["bare", "state_dict", "model", "mmcv-meta", "ddp-module"],
)
def test_original_layouts_load_strictly(tmp_path, mini_sd, mini_model, wrap):
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(mini_sd), path)
    load_pretrained(mini_model, path, strict=True)
    assert_loaded(mini_model, mini_sd)


def test_ema_weights_are_preferred(tmp_path, mini_sd, mini_model):
    other = synthetic_state_dict("nat_mini", seed=1)
    torch.save({"state_dict": other, "state_dict_ema": mini_sd}, tmp_path / "ckpt.pth")
    load_pretrained(mini_model, tmp_path / "ckpt.pth")
    assert_loaded(mini_model, mini_sd)


def test_mm_detection_checkpoint_loads_into_the_backbone(tmp_path):
    sd = synthetic_state_dict("nat_tiny_backbone")
    detector = {"backbone." + k: v for k, v in sd.items()}
    detector |= {"neck.lateral_convs.0.conv.weight": torch.zeros(256, 64, 1, 1)}
    detector |= {"roi_head.bbox_head.fc_cls.weight": torch.zeros(81, 1024)}
    torch.save(
        {"meta": {"CLASSES": ("person", "car")}, "state_dict": detector}, tmp_path / "det.pth"
    )
    backbone = NATBackbone(embed_dim=64, mlp_ratio=3, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16))
    load_pretrained(backbone, tmp_path / "det.pth", strict=True)
    assert_loaded(backbone, sd)


def test_mm_checkpoint_through_timm_features_only(tmp_path):
    sd = synthetic_state_dict("nat_tiny_backbone")
    torch.save({"state_dict": {"backbone." + k: v for k, v in sd.items()}}, tmp_path / "seg.pth")
    model = timm.create_model(
        "nat_tiny",
        features_only=True,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "seg.pth")),
    )
    assert_loaded(model, sd)


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "model.safetensors"])
def test_hugging_face_files_load_strictly(tmp_path, mini_sd, mini_model, filename):
    hf = to_hf(mini_sd, "nat")
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        safetensors.torch.save_file(hf, str(path))
    else:
        torch.save(hf, path)
    assert detect_layout(hf) == "hf"
    load_pretrained(mini_model, path, strict=True)
    assert_loaded(mini_model, mini_sd)


def write_hf_dinat_mini(directory: pathlib.Path, sd: dict) -> None:
    directory.mkdir()
    safetensors.torch.save_file(to_hf(sd, "dinat"), str(directory / "model.safetensors"))
    config = {
        "model_type": "dinat",
        "embed_dim": 64,
        "depths": [3, 4, 6, 5],
        "num_heads": [2, 4, 8, 16],
        "kernel_size": 7,
        "mlp_ratio": 3.0,
        "layer_scale_init_value": 0.0,
        "drop_path_rate": 0.2,
        "dilations": [[1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1, 1, 1, 1, 1]],
        "id2label": {str(i): str(i) for i in range(1000)},
    }
    (directory / "config.json").write_text(json.dumps(config))


def test_hub_directory_builds_the_right_model(tmp_path):
    sd = synthetic_state_dict("dinat_mini")
    write_hf_dinat_mini(tmp_path / "dinat-mini-in1k-224", sd)
    model = load_model(tmp_path / "dinat-mini-in1k-224")
    assert model.dilations == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 3, [1] * 5]
    assert_loaded(model, sd)


def test_hub_directory_through_timm_overlay(tmp_path):
    sd = synthetic_state_dict("dinat_mini")
    write_hf_dinat_mini(tmp_path / "hub", sd)
    model = timm.create_model(
        "dinat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "hub"))
    )
    assert_loaded(model, sd)


def test_hub_config_with_other_dilations_warns(tmp_path):
    write_hf_dinat_mini(tmp_path / "hub", synthetic_state_dict("dinat_mini"))
    with pytest.warns(UserWarning, match="config has dilations="):
        load_pretrained(timm.create_model("nat_mini"), tmp_path / "hub")


def test_safetensors_is_recognised_by_content(tmp_path, mini_sd, mini_model):
    safetensors.torch.save_file(mini_sd, str(tmp_path / "weights.pt"))
    load_pretrained(mini_model, tmp_path / "weights.pt")
    assert_loaded(mini_model, mini_sd)


class _Payload:
    """Pickles as a call that would create a file when unpickled."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickled_code_is_refused_not_run(tmp_path, mini_sd, mini_model):
    marker = tmp_path / "code-was-run"
    torch.save({"state_dict": mini_sd, "extra": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"carries pickled Python objects.*refused"):
        load_pretrained(mini_model, tmp_path / "evil.pth")
    assert not marker.exists()


def test_shape_mismatch_names_key_and_both_shapes(mini_sd):
    model = nat.models.NAT(embed_dim=64, mlp_ratio=2, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16))
    with pytest.raises(
        CheckpointError,
        match=r"levels\.0\.blocks\.0\.mlp\.fc1\.weight: checkpoint \[192, 64\] "
        r"vs model \[128, 64\]",
    ):
        load_pretrained(model, mini_sd)


def test_missing_and_unexpected_keys_are_named(mini_sd, mini_model):
    broken = dict(mini_sd)
    broken["levels.9.blocks.0.extra"] = broken.pop("levels.1.blocks.2.attn.rpb")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(mini_model, broken)
    assert "missing keys (levels.1.blocks.2.attn.rpb)" in str(err.value)
    assert "unexpected keys (levels.9.blocks.0.extra)" in str(err.value)


def test_non_strict_loading_skips_with_a_warning(mini_sd):
    model = timm.create_model("nat_mini")
    broken = dict(mini_sd)
    del broken["levels.1.blocks.2.attn.rpb"]
    with pytest.warns(UserWarning, match=r"missing keys \(levels\.1\.blocks\.2\.attn\.rpb\)"):
        result = load_pretrained(model, broken, strict=False)
    assert result.missing_keys == ["levels.1.blocks.2.attn.rpb"]
    assert torch.equal(model.head.weight, mini_sd["head.weight"])


def test_other_num_classes_drops_the_head_with_a_warning(mini_sd):
    model = timm.create_model("nat_mini", num_classes=10)
    head = model.head.weight.clone()
    with pytest.warns(UserWarning, match="checkpoint has 1000 classes and the model 10"):
        load_pretrained(model, mini_sd)
    assert torch.equal(model.head.weight, head)
    assert torch.equal(model.norm.weight, mini_sd["norm.weight"])


def logits(model, seed=0):
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def test_round_trips_keep_the_logits(tmp_path):
    model = timm.create_model(
        "nat_small"
    )  # layer scale: exercises gamma <-> layer_scale_parameters
    expected = logits(model)
    torch.save({"model": model.state_dict()}, tmp_path / "nat_small.pth")
    original, sidecar = convert_checkpoint(tmp_path / "nat_small.pth", tmp_path / "out")
    assert json.loads(sidecar.read_text())["architecture"] == "nat_small"
    hf_files = convert_checkpoint(original, tmp_path / "hf", layout="hf")
    back, _ = convert_checkpoint(tmp_path / "hf", tmp_path / "back.safetensors")
    for path in (original, tmp_path / "hf", back):
        assert torch.equal(logits(load_model(path)), expected)
    assert json.loads(hf_files[1].read_text())["layer_scale_init_value"] == pytest.approx(1e-5)


def test_dinat_round_trip_keeps_the_dilations(tmp_path):
    model = timm.create_model("dinat_mini")
    expected = logits(model)
    torch.save(model.state_dict(), tmp_path / "dinat_mini_in1k_224.pth")
    convert_checkpoint(tmp_path / "dinat_mini_in1k_224.pth", tmp_path / "hf", layout="hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "dinat"
    rebuilt = load_model(tmp_path / "hf")
    assert rebuilt.dilations == model.dilations
    assert torch.equal(logits(rebuilt), expected)


def test_nat_and_dinat_weights_are_told_apart_only_by_name(tmp_path, mini_sd):
    torch.save(mini_sd, tmp_path / "weights.pth")
    with pytest.raises(ValueError, match=r"fits \['dinat_mini', 'nat_mini'\]"):
        convert_checkpoint(tmp_path / "weights.pth", tmp_path / "out.safetensors")
    _, sidecar = convert_checkpoint(
        tmp_path / "weights.pth", tmp_path / "out.safetensors", model="dinat_mini"
    )
    assert json.loads(sidecar.read_text())["model_args"]["dilations"][0] == [1, 8, 1]


def test_backbone_checkpoint_has_no_hugging_face_layout(tmp_path):
    sd = synthetic_state_dict("nat_tiny_backbone")
    torch.save(
        {"state_dict": {"backbone." + k: v for k, v in sd.items()}},
        tmp_path / "nat_tiny_upernet.pth",
    )
    with pytest.raises(ValueError, match="backbone checkpoint"):
        convert_checkpoint(tmp_path / "nat_tiny_upernet.pth", tmp_path / "hf", layout="hf")
    path, _ = convert_checkpoint(tmp_path / "nat_tiny_upernet.pth", tmp_path / "bb.safetensors")
    backbone = load_model(path)
    assert isinstance(backbone, NATBackbone)
    assert_loaded(backbone, sd)


@pytest.mark.parametrize(
    ("filename", "variant"),
    [
        ("dinat_large_in22k_in1k_384.pth", "dinat_large_384"),
        ("dinat_large_in22k_in1k_224.pth", "dinat_large"),
        ("nat_tiny_maskrcnn.pth", "nat_tiny"),
        ("dinat-tiny-in1k-224", "dinat_tiny"),
    ],
)
def test_published_file_names_break_nat_dinat_ties(filename, variant):
    base = "dinat_large" if "large" in filename else "nat_tiny"
    state_dict = {k: torch.empty(s, device="meta") for k, s in published_shapes(base).items()}
    assert identify_variant(state_dict, filename) == variant


def test_load_state_dict_strict_loads_an_exact_state_dict(mini_sd):
    model = timm.create_model("nat_mini")
    load_state_dict_strict(model, mini_sd, "weights.pth")
    assert_loaded(model, mini_sd)


def test_load_state_dict_strict_is_one_line_with_counts_and_examples(mini_sd):
    model = timm.create_model("nat_mini")
    broken = dict(mini_sd)
    del broken["levels.1.blocks.2.attn.rpb"]
    broken["extra.weight"] = torch.zeros(1)
    before = model.levels[0].blocks[0].attn.qkv.weight.clone()
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(model, broken, "run/last.pt")
    message = str(err.value)
    assert "\n" not in message and message.startswith("run/last.pt does not fit NAT: ")
    assert "1 missing keys (levels.1.blocks.2.attn.rpb)" in message
    assert "1 unexpected keys (extra.weight)" in message
    assert "num_classes" not in message
    assert torch.equal(model.levels[0].blocks[0].attn.qkv.weight, before)  # nothing loaded


def test_load_state_dict_strict_names_a_num_classes_mismatch(mini_sd):
    model = timm.create_model("nat_mini", num_classes=10)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(model, mini_sd, "imagenet.pth")
    assert "2 shape mismatches (head.weight: checkpoint [1000, 512] vs model [10, 512]" in str(
        err.value
    )
    assert str(err.value).endswith("; num_classes mismatch: the checkpoint has 1000 classes")


def test_load_state_dict_strict_follows_the_configured_classifier():
    model = nn.Sequential(nn.Linear(4, 3))
    model.pretrained_cfg = {"classifier": "0"}
    with pytest.raises(CheckpointError, match="num_classes mismatch: the checkpoint has 5 classes"):
        load_state_dict_strict(
            model, {"0.weight": torch.zeros(5, 4), "0.bias": torch.zeros(5)}, "other.pth"
        )


def test_load_pretrained_strict_names_the_file(tmp_path, mini_sd):
    broken = dict(mini_sd)
    del broken["levels.1.blocks.2.attn.rpb"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(timm.create_model("nat_mini"), tmp_path / "broken.pth")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint={str(tmp_path / 'broken.pth')!r} does not fit NAT: ")


def write_empty(path):
    path.write_bytes(b"")


def write_corrupt_safetensors(path):
    header = b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)  # data cut short


@pytest.mark.parametrize(
    ("name", "write", "reason"),
    [
        ("empty.pth", write_empty, "is empty"),
        ("corrupt.safetensors", write_corrupt_safetensors, "is a corrupt safetensors file"),
    ],
)
def test_unreadable_files_are_one_line_errors(tmp_path, mini_model, name, write, reason):
    path = tmp_path / name
    write(path)
    for call in (
        lambda: load_pretrained(mini_model, path),
        lambda: convert_checkpoint(path, tmp_path / "out.safetensors"),
    ):
        with pytest.raises(CheckpointError) as err:
            call()
        assert reason in str(err.value) and str(path) in str(err.value)
        assert "\n" not in str(err.value)
    assert not (tmp_path / "out.safetensors").exists()


def test_directory_without_weights_is_named(tmp_path, mini_model):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as err:
        load_pretrained(mini_model, tmp_path)
    assert str(err.value) == (
        f"checkpoint={str(tmp_path)!r} is a directory without model.safetensors or "
        f"pytorch_model.bin"
    )


def test_malformed_config_json_is_named(tmp_path, mini_model):
    safetensors.torch.save_file(mini_model.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text('{"model_type": "nat",')
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    assert str(err.value).startswith(
        f"config={str(tmp_path / 'config.json')!r} is not valid JSON ("
    )
    assert "\n" not in str(err.value)


def test_malformed_sidecar_json_is_named(tmp_path, mini_model):
    path, sidecar = convert_checkpoint(
        _saved(tmp_path, mini_model), tmp_path / "out" / "m.safetensors", model="nat_mini"
    )
    sidecar.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"m\.json' holds a JSON list, not an object"):
        load_model(path)
    sidecar.write_text("")
    with pytest.raises(CheckpointError, match=r"m\.json' is not valid JSON \(Expecting value"):
        load_pretrained(mini_model, path)


def _saved(tmp_path, model):
    path = tmp_path / "nat_mini.pth"
    torch.save(model.state_dict(), path)
    return path


def test_conversion_leaves_no_partial_file_when_a_write_fails(tmp_path, mini_model, monkeypatch):
    import nat.files

    destination = tmp_path / "out.safetensors"
    destination.write_bytes(b"previous")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nat.files.os, "fsync", full_disk)
    with pytest.raises(OSError, match=r"out\.safetensors' cannot be written \(No space left"):
        convert_checkpoint(_saved(tmp_path, mini_model), destination, model="nat_mini")
    assert destination.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nat_mini.pth", "out.safetensors"]
