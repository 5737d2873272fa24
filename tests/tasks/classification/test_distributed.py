"""Two processes (gloo, CPU) under torchrun against one process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nat.tasks.classification import TrainConfig, train

from .conftest import TINY

# Deterministic steps, so that only the reduction order differs between the runs.
NO_RANDOMNESS = {**TINY, "drop_path": 0.0, "scale": [1.0, 1.0], "ratio": [1.0, 1.0], "smoothing": 0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from ...data.folders import make_split_folder

    root = tmp_path_factory.mktemp("ddp")
    data = make_split_folder(root / "data", classes=3, train=8, val=4)
    per_rank = {**NO_RANDOMNESS, "batch_size": 2, "data": str(data), "output": str(root / "ddp")}
    (root / "ddp.json").write_text(json.dumps(per_rank))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    script = Path(__file__).with_name("ddp_train.py")
    proc = subprocess.run(
        [*cmd, str(script), str(root / "ddp.json")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    whole = {**NO_RANDOMNESS, "batch_size": 4, "data": str(data), "output": str(root / "single")}
    single = train(TrainConfig().replace(**whole), progress=False)
    ranks = [torch.load(root / "ddp" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    summary = json.loads((root / "ddp" / "summary.json").read_text())
    return ranks, single, summary


def test_replicas_hold_identical_parameters(runs):
    (rank0, rank1), _, _ = runs
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)


def test_two_processes_match_one_with_the_same_global_batch(runs):
    (rank0, _), single, _ = runs
    expected = single.model.state_dict()
    worst = max((rank0[k] - expected[k]).abs().max().item() for k in rank0)
    assert worst < 1e-5


def test_metrics_are_reduced_over_the_whole_validation_set(runs):
    _, single, summary = runs
    assert (summary["top1"], summary["top5"]) == (single.summary["top1"], single.summary["top5"])


def test_under_torchrun_only_rank_0_prints_the_summary(folder, tmp_path):
    sets = [f"--set={k}={'null' if v is None else v}" for k, v in {**TINY, "epochs": 1}.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = ["-m", "nat", "train", "--data", str(folder), "--output", str(tmp_path / "run")]
    proc = subprocess.run(
        [*cmd, *args, "--no-progress", "--json", *sets], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == json.loads((tmp_path / "run" / "summary.json").read_text())
