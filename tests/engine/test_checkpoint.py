import random

import numpy as np
import pytest
import torch

from nat.engine import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    resumed_settings,
    save_checkpoint,
)


def test_roundtrip_loads_with_weights_only(tmp_path):
    path = save_checkpoint({"w": torch.arange(3), "args": {"lr": 0.1}}, tmp_path / "c.pt")
    state = torch.load(path, weights_only=True)
    assert state["args"] == {"lr": 0.1} and state["w"].tolist() == [0, 1, 2]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint({"epoch": 1}, tmp_path / "c.pt")

    def crash(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1 and sorted(tmp_path.iterdir()) == [path]


def test_truncated_checkpoint_is_one_clear_error(tmp_path):
    path = save_checkpoint({"w": torch.zeros(1000)}, tmp_path / "c.pt")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")


def test_rng_state_roundtrip_through_a_file_repeats_every_generator(tmp_path):
    path = save_checkpoint({"rng": capture_rng_state()}, tmp_path / "c.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


SAVED = {"format": "f-v1", "config": {"lr": 0.1, "epochs": 3, "workers": 4}}


def test_resume_with_the_same_settings_takes_the_runtime_ones_from_the_request():
    requested = {"lr": 0.1, "epochs": 3, "workers": 0}
    resumed = resumed_settings(SAVED, requested, format="f-v1", runtime={"workers"}, path="c.pt")
    assert resumed == requested


def test_resume_with_other_settings_is_refused_naming_them():
    requested = {"lr": 0.2, "epochs": 3, "workers": 4}
    with pytest.raises(
        ValueError, match=r"cannot resume c\.pt with different settings \(lr: 0\.1 -> 0\.2\)"
    ):
        resumed_settings(SAVED, requested, format="f-v1", runtime={"workers"}, path="c.pt")


def test_resume_from_another_kind_of_checkpoint_is_refused():
    with pytest.raises(CheckpointError, match=r"c\.pt is not a f-v2 checkpoint"):
        resumed_settings(SAVED, SAVED["config"], format="f-v2", runtime=(), path="c.pt")
