"""``nat models`` and ``nat convert``."""

from __future__ import annotations

import os

import pytest
import torch

from nat.cli import main
from nat.models import load_model


def test_models_prints_measured_and_published_figures(capsys):
    assert main(["models", "nat_mini", "nat_digits"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("nat_mini"))
    assert row.split() == [
        "nat_mini",
        "224x224",
        "19,984,174",
        "19,984,174",
        "2.695",
        "0.140",
        "2.7",
        "81.8",
    ]
    assert "nat_digits" in out


def test_models_rejects_unknown_names(capsys):
    assert main(["models", "resnet50"]) == 2
    assert "names=['resnet50'] are not registered" in capsys.readouterr().err


def test_convert_to_original_and_hf(tmp_path, capsys):
    from timm import create_model

    model = create_model("nat_mini")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "nat_mini.pth")
    assert (
        main(["convert", str(tmp_path / "nat_mini.pth"), str(tmp_path / "nat_mini.safetensors")])
        == 0
    )
    assert (
        main(
            ["convert", str(tmp_path / "nat_mini.safetensors"), str(tmp_path / "hf"), "--to", "hf"]
        )
        == 0
    )
    printed = capsys.readouterr().out.split()
    assert printed == [
        str(tmp_path / "nat_mini.safetensors"),
        str(tmp_path / "nat_mini.json"),
        str(tmp_path / "hf" / "model.safetensors"),
        str(tmp_path / "hf" / "config.json"),
    ]
    assert torch.equal(load_model(tmp_path / "hf").head.weight, model.head.weight)


def test_convert_reports_a_missing_source_in_one_line(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nat convert: error: checkpoint=") and "\n" not in err


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nat {command}: error: ") and "\n" not in err
    return err


@pytest.fixture
def mini_file(tmp_path):
    from timm import create_model

    path = tmp_path / "nat_mini.pth"
    torch.save(create_model("nat_mini").state_dict(), path)
    return path


def test_convert_rejects_an_unknown_layout(tmp_path, capsys, mini_file):
    assert main(["convert", str(mini_file), str(tmp_path / "out"), "--to", "onnx"]) == 2
    assert "--to='onnx' must be one of original, hf" in one_line_error(capsys, "convert")
    assert not (tmp_path / "out").exists()


def test_convert_rejects_an_unknown_model(tmp_path, capsys, mini_file):
    args = ["convert", str(mini_file), str(tmp_path / "o.safetensors"), "--model", "nat_huge"]
    assert main(args) == 2
    assert "model='nat_huge' is not a registered NAT/DiNAT variant" in one_line_error(
        capsys, "convert"
    )


def test_convert_into_a_read_only_directory(tmp_path, capsys, mini_file, monkeypatch):
    import nat.files

    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: refuse the way the kernel would for others

        def refuse(path, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(nat.files, "open", refuse, raising=False)
    try:
        assert main(["convert", str(mini_file), str(read_only), "--model", "nat_mini"]) == 2
    finally:
        read_only.chmod(0o755)
    err = one_line_error(capsys, "convert")
    assert f"destination={str(read_only / 'nat_mini.safetensors')!r} cannot be written" in err
    assert "Permission denied" in err
    assert list(read_only.iterdir()) == []


_HEADER = b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}'
CUT = (
    len(_HEADER).to_bytes(8, "little") + _HEADER + b"\0" * 8
)  # 64 bytes of data announced, 8 given


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [("empty.pth", b"", "is empty (0 bytes)"), ("bad.safetensors", CUT, "corrupt safetensors")],
)
def test_convert_reports_unreadable_sources_in_one_line(tmp_path, capsys, name, content, reason):
    (tmp_path / name).write_bytes(content)
    assert main(["convert", str(tmp_path / name), str(tmp_path / "out.safetensors")]) == 2
    err = one_line_error(capsys, "convert")
    assert f"checkpoint={str(tmp_path / name)!r}" in err and reason in err


def test_convert_reports_a_directory_without_weights(tmp_path, capsys):
    assert main(["convert", str(tmp_path), str(tmp_path / "out.safetensors")]) == 2
    assert "is a directory without model.safetensors" in one_line_error(capsys, "convert")


@pytest.mark.parametrize("value", ["abc", "0", "-3"])
def test_models_rejects_a_bad_image_size(capsys, value):
    assert main(["models", "nat_mini", "--img-size", value]) == 2
    assert f"--img-size={value!r} must be a positive integer" in one_line_error(capsys, "models")
