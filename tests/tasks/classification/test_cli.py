"""The CLI end to end on a tiny image folder: train, validate, predict, and bad input."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest
import torch

from nat.cli import main
from nat.tasks.classification import TrainConfig

from ...data.folders import corrupt, make_image_folder, make_split_folder
from .conftest import TINY


def _train_args(data, output, *extra):
    sets = [f"--set={k}={'null' if v is None else v}" for k, v in TINY.items()]
    return ["train", "--data", str(data), "--output", str(output), "--no-progress", *sets, *extra]


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    return make_split_folder(tmp_path_factory.mktemp("data"), classes=3, train=8, val=4)


@pytest.fixture(scope="module")
def trained(trained_folder, tmp_path_factory):
    """One training run shared by the tests that only read its outputs."""
    out, printed = tmp_path_factory.mktemp("run"), io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*_train_args(trained_folder, out), "--json"]) == 0
    return out, json.loads(printed.getvalue())


def test_train_prints_the_summary_as_json(trained):
    out, printed = trained
    assert printed == json.loads((out / "summary.json").read_text())


def test_train_writes_summary_log_and_checkpoints(trained):
    out, summary = trained
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert {"top1", "top5", "epochs", "train_seconds", "images_per_second", "checkpoint"} <= set(
        summary
    )
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()


def test_checkpoint_holds_everything_to_resume(trained):
    state = torch.load(trained[0] / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "ema", "epoch", "rng", "config"} <= set(
        state
    )


def test_validate_reproduces_the_final_top1(trained, trained_folder, capsys):
    out, summary = trained
    argv = ["validate", "--model", "nat_digits", "--checkpoint", str(out / "last.pt")]
    argv += ["--data", str(trained_folder), "--workers", "0", "--json", "--no-progress"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(summary["top1"])


def test_predict_lists_top_k_class_names_with_probabilities(trained, trained_folder, capsys):
    image = trained_folder / "val" / "c1" / "0.png"
    argv = ["predict", str(image), "--checkpoint", str(trained[0] / "best.pt"), "--top-k", "2"]
    assert main([*argv, "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    probs = [t["probability"] for t in result["top"]]
    assert [t["label"] in {"c0", "c1", "c2"} for t in result["top"]] == [True, True]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_predict_prints_a_table(trained, trained_folder, capsys):
    image = trained_folder / "val" / "c0" / "0.png"
    assert main(["predict", str(image), "--checkpoint", str(trained[0] / "last.pt")]) == 0
    assert "probability" in capsys.readouterr().out.splitlines()[0]


def test_rerun_in_the_same_directory_resumes_with_nothing_left(trained, trained_folder, capsys):
    out, summary = trained
    assert main([*_train_args(trained_folder, out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["top1"], again["epochs"]) == (summary["top1"], summary["epochs"])


def _error(argv, capsys) -> str:
    """The error line of a failing command: exit 2, ``nat <cmd>: error: ...``, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"nat {argv[0]}: error: "), err
    return line


def test_missing_data_directory(tmp_path, capsys):
    err = _error(_train_args(tmp_path / "nowhere", tmp_path / "run"), capsys)
    assert "does not exist" in err


def test_empty_data_directory(tmp_path, capsys):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    err = _error(_train_args(tmp_path / "empty", tmp_path / "run"), capsys)
    assert "no images found" in err


def test_checkpoint_of_another_model(trained, trained_folder, capsys):
    argv = ["validate", "--model", "resnet10t", "--checkpoint", str(trained[0] / "last.pt")]
    err = _error([*argv, "--data", str(trained_folder)], capsys)
    assert "holds a nat_digits model, not resnet10t" in err


def test_num_classes_mismatch_with_the_data(folder, tmp_path, capsys):
    err = _error([*_train_args(folder, tmp_path / "run"), "--num-classes", "5"], capsys)
    assert "num_classes mismatch" in err


def test_num_classes_mismatch_with_the_checkpoint(trained, capsys):
    argv = ["validate", "--checkpoint", str(trained[0] / "last.pt"), "--num-classes", "10"]
    err = _error([*argv, "--data", "digits"], capsys)
    assert "num_classes mismatch" in err


def test_corrupt_checkpoint(trained, trained_folder, tmp_path, capsys):
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes((trained[0] / "last.pt").read_bytes()[:1000])
    err = _error(["validate", "--checkpoint", str(ckpt), "--data", str(trained_folder)], capsys)
    assert "truncated or corrupt" in err


def test_corrupt_image_fails_naming_the_file(folder, tmp_path, capsys):
    bad = corrupt(folder / "train" / "c2" / "3.png")
    err = _error(_train_args(folder, tmp_path / "run"), capsys)
    assert f"cannot read image {bad}" in err


def test_corrupt_image_is_skipped_with_a_flag(folder, tmp_path, capsys):
    corrupt(folder / "train" / "c2" / "3.png")
    assert main([*_train_args(folder, tmp_path / "run"), "--skip-bad-images", "--epochs=1"]) == 0


def test_unreadable_image_to_predict(trained, tmp_path, capsys):
    bad = corrupt(make_image_folder(tmp_path, classes=1, per_class=1) / "c0" / "0.png")
    err = _error(["predict", str(bad), "--checkpoint", str(trained[0] / "last.pt")], capsys)
    assert f"cannot read image {bad}" in err


def test_a_nan_loss_stops_training_with_an_error(folder, tmp_path, capsys):
    err = _error([*_train_args(folder, tmp_path / "run"), "--set=lr=1000.0"], capsys)
    assert "the training loss is nan at epoch 1, step" in err
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_second_run_on_the_same_output_is_refused(folder, tmp_path, capsys):
    hold = (
        "import sys; from nat.engine import DistEnv, RunDirectory; "
        "run = RunDirectory(sys.argv[1], DistEnv()).__enter__(); print('locked', flush=True); "
        "sys.stdin.read()"
    )
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        err = _error(_train_args(folder, out), capsys)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert f"output directory '{out}' is in use by another training run (pid {holder.pid})" in err


def test_data_without_a_recipe_gets_the_default_settings_not_the_digits_recipe(folder, tmp_path):
    out = tmp_path / "run"
    assert main(_train_args(folder, out, "--epochs", "1")) == 0
    config = torch.load(out / "last.pt", weights_only=True)["config"]
    defaults = TrainConfig()
    assert (config["threads"], config["min_lr"]) == (defaults.threads, defaults.min_lr)
