"""``nat models`` and ``nat convert``."""

from __future__ import annotations

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
