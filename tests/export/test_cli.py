"""``nat export``: the command writes the file, prints the check, refuses bad values in one line."""

from __future__ import annotations

import pytest
import torch

from nat.cli import main
from nat.export import load_program

from .models import nat_digits


def test_onnx_export_prints_the_check(tmp_path, capsys):
    path = tmp_path / "digits.onnx"
    status = main(["export", "nat_digits", "--format", "onnx", "--output", str(path)])
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert out[0].startswith(f"wrote {path} (onnx, input [1, 3, 32, 32], opset ")
    assert out[1].startswith("checked in onnxruntime at batch 1, size 32x32: largest difference ")
    assert path.stat().st_size > 0


def test_checkpoint_weights_are_exported(tmp_path, capsys):
    model = nat_digits()
    torch.save(model.state_dict(), tmp_path / "digits.pth")
    path = tmp_path / "digits.pt2"
    argv = ["export", "nat_digits", "--checkpoint", str(tmp_path / "digits.pth")]
    argv += ["--format", "exported-program", "--output", str(path), "--batch", "dynamic"]
    argv += ["--input-size", "24", "28", "--backend", "torch"]
    assert main(argv) == 0
    assert "input [batch, 3, 24, 28]" in capsys.readouterr().out
    x = torch.randn(4, 3, 24, 28)
    with torch.no_grad():
        torch.testing.assert_close(load_program(path).module()(x), model(x))


def test_dynamic_size_program_takes_other_sizes(tmp_path, capsys):
    model = nat_digits()
    torch.save(model.state_dict(), tmp_path / "digits.pth")
    path = tmp_path / "digits.pt2"
    argv = ["export", "nat_digits", "--format", "exported-program", "--output", str(path)]
    argv += ["--checkpoint", str(tmp_path / "digits.pth")]
    assert main([*argv, "--dynamic-size", "--input-size", "40", "48"]) == 0
    out = capsys.readouterr().out
    assert "input [1, 3, H>=33, W>=33]" in out
    assert "size 40x48, 33x33:" in out
    program = load_program(path).module()
    for size in ((33, 70), (64, 35)):
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x))


EXPORT = ["export", "nat_digits", "--output", "{dir}/out.onnx"]
CASES = [
    ([*EXPORT, "--format", "tflite"], "--format"),
    (EXPORT, "--format"),
    (["export", "nat_digits", "--format", "onnx"], "--output"),
    ([*EXPORT, "--format", "onnx", "--batch", "0"], "--batch"),
    ([*EXPORT, "--format", "onnx", "--batch", "many"], "--batch"),
    ([*EXPORT, "--format", "onnx", "--input-size", "0", "32"], "--input-size"),
    ([*EXPORT, "--format", "onnx", "--input-size", "32"], "--input-size"),
    ([*EXPORT, "--format", "onnx", "--opset", "17"], "--opset=17"),
    ([*EXPORT, "--format", "exported-program", "--opset", "18"], "--opset=18"),
    (["export", "bogus_model", "--format", "onnx", "--output", "{dir}/o.onnx"], "bogus_model"),
    ([*EXPORT, "--format", "onnx", "--checkpoint", "{dir}/missing.pth"], "missing.pth"),
    ([*EXPORT, "--format", "exported-program", "--backend", "fused"], "backend='fused'"),
    ([*EXPORT, "--format", "onnx", "--dynamic-size"], "--dynamic-size"),
    (
        [*EXPORT, "--format", "exported-program", "--dynamic-size", "--input-size", "20", "48"],
        "input_size=(20, 48) is below (33, 33)",
    ),
]


@pytest.mark.parametrize(("argv", "named"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_value_is_one_line_naming_it(argv, named, tmp_path, capsys):
    argv = [word.format(dir=tmp_path) for word in argv]
    try:
        status = main(argv)
    except SystemExit as exit_:  # the parser's own errors
        status = exit_.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status not in (0, None)
    assert len(lines) == 1, lines
    assert named in lines[0], lines
    assert not (tmp_path / "out.onnx").exists()
