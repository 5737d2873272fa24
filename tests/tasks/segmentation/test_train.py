"""``nat segment train | eval | predict`` on generated data: the loss falls, a few images are
learnt, resume is exact, eval writes its JSON, predict its overlay."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nat.cli import main
from nat.data.segmentation import SyntheticScenes, write_mask_folder
from nat.engine import load_checkpoint
from nat.tasks.segmentation import load_config
from nat.tasks.segmentation.train import train

TINY = {
    "backbone_args": {
        "embed_dim": 16,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 2, 2, 4],
        "kernel_size": 3,
    },
    "channels": 16,
    "aux_channels": 8,
    "batch_size": 4,
    "synthetic_size": 32,
    "crop_size": 32,
    "scale": [64, 32],
    "workers": 0,
}


@pytest.fixture(scope="module")
def few_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic scenes, the same in train and val, with >= 250 pixels of every class."""
    scenes = [SyntheticScenes("train", size=48).load(i) for i in (3, 6, 7, 14)]
    root = tmp_path_factory.mktemp("few")
    return write_mask_folder(root, {"train": scenes, "val": scenes}, SyntheticScenes.classes)


def test_a_few_images_are_learnt(few_images: Path, tmp_path: Path) -> None:
    config = load_config("synthetic").replace(
        **{**TINY, "crop_size": 48, "scale": [96, 48]},
        data=str(few_images),
        output=str(tmp_path / "run"),
        iterations=200,
        eval_interval=100,
        lr=3e-3,
        warmup_iters=5,
        ratio_range=[1.0, 1.0],
        photometric=False,
        flip=0.0,
    )
    result = train(config, progress=False)
    history = load_checkpoint(result.output / "last.pt")["history"]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert result.summary["miou"] > 80  # measured: 88.9 (81.8 after 100 iterations)


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path: Path) -> None:
    config = load_config("synthetic").replace(
        **TINY, iterations=6, eval_interval=3, synthetic_train=8, synthetic_val=2
    )
    whole = train(config.replace(output=str(tmp_path / "whole")), progress=False)
    first = config.replace(output=str(tmp_path / "cut"), iterations=3)
    train(first, progress=False)
    # What a kill after the first epoch leaves: last.pt of epoch 1 with the full run's settings.
    # All 6 iterations lie in the warm-up (25), whose learning rates do not depend on the total,
    # so the 3-iteration run is the 6-iteration run's first epoch.
    assert config.warmup_iters > config.iterations
    state = load_checkpoint(tmp_path / "cut" / "last.pt")
    state["config"]["iterations"] = state["scheduler"]["t_initial"] = 6
    torch.save(state, tmp_path / "cut" / "last.pt")
    resumed = train(config.replace(output=str(tmp_path / "cut")), progress=False)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["miou"] == whole.summary["miou"]


def test_cli_train_eval_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    assert main(["segment", "train", "--iterations", "4", "--eval-interval", "2", "--output",
                 str(run), "--no-progress", "--set=synthetic_val=3", *sets]) == 0  # fmt: skip
    assert "miou" in capsys.readouterr().out
    report = tmp_path / "eval.json"
    assert main(["segment", "eval", str(run / "last.pt"), "--multi-scale", "--flip",
                 "--json", str(report), "--no-progress", "--workers", "0"]) == 0  # fmt: skip
    table = capsys.readouterr().out
    result = json.loads(report.read_text())
    assert result["images"] == 3 and len(result["per_class"]) == 5
    assert len(result["protocol"]["ratios"]) == 6 and result["protocol"]["flip"]
    assert "triangle" in table and f"{result['miou']:.2f}" in table
    image = tmp_path / "scene.png"
    Image.fromarray(SyntheticScenes("val", size=32).load(0)[0]).save(image)
    assert main(["segment", "predict", str(image), "--checkpoint", str(run / "last.pt"),
                 "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    overlay = np.asarray(Image.open(tmp_path / "out" / "scene_overlay.png"))
    assert overlay.shape[1] > 32 and overlay.shape[0] >= 32  # the image and its legend


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("size", r"mask \S+00001.png is 5x5 but image \S+00001.png is 8x8"),
        ("label", r"mask \S+00001.png has label 9, outside the 3 classes"),
        ("corrupt", r"cannot read mask \S+00001.png"),
    ],
)
def test_a_bad_file_met_in_training_stops_it_naming_the_file(
    fault: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    samples = [(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))] * 2
    root = write_mask_folder(tmp_path / "data", {"train": samples, "val": samples}, "abc")
    mask = root / "masks/train/00001.png"
    if fault == "size":
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(mask)
    elif fault == "label":
        Image.fromarray(np.full((8, 8), 9, np.uint8)).save(mask)
    else:
        mask.write_bytes(mask.read_bytes()[:40])
    argv = ["segment", "train", "--config", "synthetic", "--data", str(root), "--iterations", "1",
            "--eval-interval", "1", "--batch-size", "2", "--output", str(tmp_path / "run"),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(rf"nat segment: error: .*{message}.*", last), last
