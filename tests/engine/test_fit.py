"""The fit loop: a non-finite loss stops the run before it spoils weights or checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nat.engine import NonFiniteLossError, load_checkpoint

from .fitting import STEPS_PER_EPOCH, run_fit


def test_a_nan_loss_stops_the_run_naming_epoch_step_and_loss(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, step 2/4"):
        run_fit(tmp_path, nan_at=STEPS_PER_EPOCH + 1)


def test_the_step_with_a_nan_loss_is_not_taken(tmp_path):
    with pytest.raises(NonFiniteLossError):
        run_fit(tmp_path, nan_at=STEPS_PER_EPOCH + 1)
    state = load_checkpoint(tmp_path / "last.pt")
    weights = state["model"]["weight"]
    assert state["epoch"] == 1 and torch.isfinite(weights).all()


def test_the_last_good_checkpoints_and_log_stay(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"last\.pt keeps epoch 1"):
        run_fit(tmp_path, nan_at=STEPS_PER_EPOCH + 1)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1


def test_a_nan_loss_in_the_first_epoch_writes_no_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written"):
        run_fit(tmp_path, nan_at=0)
    assert not (tmp_path / "last.pt").exists()


def _strict(constant: str):
    raise AssertionError(f"bare {constant} in JSON")


def test_the_log_is_valid_json_when_a_metric_is_nan(tmp_path):
    run_fit(tmp_path)
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        assert json.loads(line, parse_constant=_strict)["val_loss"] is None


def test_the_best_epoch_is_the_highest_score(tmp_path):
    _, result = run_fit(tmp_path, scores=[1.0, 3.0, 2.0])
    assert result.best["epoch"] == 2 and load_checkpoint(tmp_path / "best.pt")["epoch"] == 2


@pytest.fixture(scope="module")
def ddp_nan(tmp_path_factory):
    """Two processes (gloo) where only rank 1's loss turns NaN, in epoch 2."""
    root = tmp_path_factory.mktemp("ddp_nan")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    script = Path(__file__).with_name("ddp_fit.py")
    proc = subprocess.run(
        [*cmd, str(script), str(root)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_under_ddp_every_rank_stops_at_the_same_step(ddp_nan):
    errors = [(ddp_nan / f"rank{r}.err").read_text() for r in range(2)]
    assert errors[0] == errors[1] and "at epoch 2, step 1/4" in errors[0]
