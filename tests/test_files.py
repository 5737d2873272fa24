"""Atomic writes, valid JSON and safe reading of tensor files (``nat.files``)."""

import json
import math

import pytest
import safetensors.torch
import torch

from nat.files import (
    CheckpointError,
    atomic_open,
    atomic_write,
    json_line,
    read_tensors,
    write_json,
)


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = atomic_write(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError, match="killed"), atomic_open(path, "w") as f:
        f.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_json_has_no_bare_nan(tmp_path):
    record = {"loss": math.nan, "lr": [math.inf, 1.0]}
    assert json.loads(json_line(record)) == {"loss": None, "lr": [None, 1.0]}
    assert json.loads(write_json(tmp_path / "s.json", record).read_text())["loss"] is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\x00" * 100, "truncated or corrupt"),
        (b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1}xxxxxxxxxxx', "corrupt safetensors"),
    ],
)
def test_unreadable_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        read_tensors(path)
    assert "\n" not in str(info.value)
    assert "bad.pth" in str(info.value)


def test_reads_both_containers(tmp_path):
    tensors = {"w": torch.arange(3.0)}
    torch.save(tensors, tmp_path / "a.pth")
    safetensors.torch.save_file(tensors, tmp_path / "a.safetensors")
    for name in ("a.pth", "a.safetensors"):
        assert torch.equal(read_tensors(tmp_path / name)["w"], tensors["w"])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_tensors(tmp_path / "nope.pth")
