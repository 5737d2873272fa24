"""SIGKILL at arbitrary moments, resume, and end bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from nat.tasks.classification import load_config, train

from ...data.folders import make_split_folder
from .conftest import TINY

# Every source of randomness on: augmentation in a worker process, Mixup/CutMix, drop path, EMA.
RANDOM = {
    **TINY,
    "epochs": 4,
    "workers": 1,
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "re_prob": 0.25,
    "mixup": 0.8,
    "cutmix": 1.0,
    "smoothing": 0.1,
    "drop_path": 0.1,
    "model_ema": True,
    "model_ema_decay": 0.9,
}


def _start(config: Path, output: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nat", "train", "--config", str(config), "--no-progress"]
    return subprocess.Popen(
        [*cmd, "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # the same arithmetic as this process
    )


def _epochs_logged(output: Path) -> int:
    log = output / "metrics.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _kill_after(proc: subprocess.Popen, output: Path, epochs: int, delay: float) -> None:
    """SIGKILL ``delay`` seconds after the log shows ``epochs`` epochs."""
    deadline = time.monotonic() + 240
    while _epochs_logged(output) < epochs:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.01)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = make_split_folder(root / "data", classes=3, train=8, val=4)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({**RANDOM, "data": str(data)}))
    straight, killed = root / "straight", root / "killed"
    run = _start(config, killed)
    _kill_after(run, killed, epochs=2, delay=0.02)  # in epoch 3, or while epoch 2 is saved
    assert torch.load(killed / "last.pt", weights_only=True)["epoch"] < RANDOM["epochs"]
    resumed = _start(config, killed)
    torch.set_num_threads(1)
    train(load_config(config, output=str(straight)), progress=False)
    _finish(resumed)
    load = lambda out: torch.load(out / "last.pt", weights_only=True)  # noqa: E731
    return load(straight), load(killed), straight, killed


def test_weights_are_bit_identical(runs):
    straight, killed, _, _ = runs
    for part in ("model", "ema"):
        assert all(torch.equal(straight[part][k], killed[part][k]) for k in straight[part])


def test_optimizer_state_is_bit_identical(runs):
    straight, killed, _, _ = runs
    a, b = straight["optimizer"]["state"], killed["optimizer"]["state"]
    assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])


def test_final_metrics_are_identical(runs):
    _, _, straight, killed = runs
    keep = ("epoch", "train_loss", "lr", "top1", "top5", "val_loss", "ema_top1", "ema_top5")
    read = lambda out: [  # noqa: E731
        {k: r[k] for k in keep} for r in map(json.loads, (out / "metrics.jsonl").open())
    ]
    assert read(straight) == read(killed) and len(read(killed)) == RANDOM["epochs"]


def test_summary_counts_every_epoch_once(runs):
    _, _, _, killed = runs
    assert json.loads((killed / "summary.json").read_text())["epochs"] == RANDOM["epochs"]
