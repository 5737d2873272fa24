"""The run directory: one live run per directory, independent checkpoint files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nat.engine import DistEnv, RunDirectory, RunLockedError, load_checkpoint

from .fitting import run_fit

HOLD = (
    "import sys; from nat.engine import DistEnv, RunDirectory; "
    "run = RunDirectory(sys.argv[1], DistEnv()).__enter__(); print('locked', flush=True); "
    "sys.stdin.read()"
)


@pytest.fixture
def held(tmp_path):
    """``tmp_path/run`` locked by another live process; yields that process."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "run")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "locked\n"
    yield proc
    proc.stdin.close()
    proc.wait(timeout=60)


def test_a_second_run_on_a_live_directory_names_it_and_the_holder(held, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunLockedError, match=rf"'{out}' is in use .* \(pid {held.pid}\)"):
        run_fit(out)
    assert not (out / "metrics.jsonl").exists()


def test_the_directory_is_free_once_its_run_ends(held, tmp_path):
    held.stdin.close()
    held.wait(timeout=60)
    with RunDirectory(tmp_path / "run", DistEnv()):
        pass


def test_best_and_last_are_independent_files(tmp_path):
    run_fit(tmp_path, scores=[1.0, 2.0, 3.0])
    assert not os.path.samefile(tmp_path / "last.pt", tmp_path / "best.pt")


def test_best_keeps_its_epoch_while_last_moves_on(tmp_path):
    run_fit(tmp_path, scores=[3.0, 2.0, 1.0])
    epochs = [load_checkpoint(tmp_path / n)["epoch"] for n in ("best.pt", "last.pt")]
    assert epochs == [1, 3]
