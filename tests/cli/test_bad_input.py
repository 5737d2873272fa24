"""Every command refuses bad option values with one line naming the input and a non-zero exit.

The table runs each case through ``nat.cli.main`` in-process; ``{file}``, ``{dir}``, ``{data}``,
``{json}`` and ``{yaml}`` stand for small files made per test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nat.cli import main
from nat.data.segmentation import write_mask_folder

from ..data.folders import make_split_folder

TRAIN = ["train", "--data", "{data}", "--no-progress", "--output", "{dir}/run"]
VALIDATE = ["validate", "--checkpoint", "{file}", "--no-progress"]
OPS = ["bench", "ops", "--quick", "--no-progress"]
MODELS = ["bench", "models", "--quick", "--no-progress"]
DETECT = ["detect", "train", "--no-progress", "--output", "{dir}/detect"]
SEGMENT = [
    "segment", "train", "--config", "synthetic", "--no-progress", "--output", "{dir}/segment",
    "--iterations", "1", "--eval-interval", "1", "--batch-size", "2",
]  # fmt: skip

CASES = [
    # nat train: flags and --set go through the same settings check
    ([*TRAIN, "--epochs", "0"], "epochs=0"),
    ([*TRAIN, "--epochs", "abc"], "--epochs"),
    ([*TRAIN, "--grad-accum", "0"], "grad_accum=0"),
    ([*TRAIN, "--lr", "inf"], "lr=inf"),
    ([*TRAIN, "--lr", "-1"], "lr=-1"),
    ([*TRAIN, "--threads", "0"], "threads=0"),
    ([*TRAIN, "--input-size", "0"], "input_size=0"),
    ([*TRAIN, "--warmup-epochs", "-3"], "warmup_epochs=-3"),
    ([*TRAIN, "--batch-size", "0"], "batch_size=0"),
    ([*TRAIN, "--workers", "-1"], "workers=-1"),
    ([*TRAIN, "--num-classes", "0"], "num_classes=0"),
    ([*TRAIN, "--drop-path", "1.5"], "drop_path=1.5"),
    ([*TRAIN, "--amp", "fp8"], "amp='fp8'"),
    ([*TRAIN, "--seed", "-1"], "seed=-1"),
    ([*TRAIN, "--max-train-samples", "0"], "max_train_samples=0"),
    ([*TRAIN, "--set", "epochs=true"], "epochs=True"),
    ([*TRAIN, "--set", "lr=abc"], "lr='abc'"),
    ([*TRAIN, "--set", "crop_pct=0"], "crop_pct=0"),
    ([*TRAIN, "--set", "interpolation=cubic"], "interpolation='cubic'"),
    ([*TRAIN, "--set", "scale=[1, 0.5]"], "scale="),
    ([*TRAIN, "--set", "mixup=[1"], "--set"),
    ([*TRAIN, "--set", "nonsense=1"], "nonsense"),
    ([*TRAIN, "--set", "novalue"], "novalue"),
    ([*TRAIN, "--config", "{yaml}"], "bad.yaml"),
    ([*TRAIN, "--config", "no_such_recipe"], "no_such_recipe"),
    ([*TRAIN, "--device", "toaster"], "toaster"),
    (["train", "--data", "{dir}/missing", "--no-progress"], "missing"),
    (["train", "--data", "{data}", "--no-progress", "--output", "{file}"], "bad.pth"),
    (["train", "--data", "{data}", "--no-progress", "--output", "{file}/run"], "bad.pth"),
    (["train", "--resume", "{dir}/missing.pt", "--no-progress"], "missing.pt"),
    (["train", "--resume", "{file}", "--no-progress"], "bad.pth"),
    # nat validate
    ([*VALIDATE, "--batch-size", "0"], "--batch-size"),
    ([*VALIDATE, "--workers", "-2"], "--workers"),
    ([*VALIDATE, "--input-size", "0"], "--input-size"),
    ([*VALIDATE, "--crop-pct", "0"], "--crop-pct"),
    ([*VALIDATE, "--crop-pct", "1.5"], "--crop-pct"),
    ([*VALIDATE, "--interpolation", "cubic"], "--interpolation"),
    ([*VALIDATE, "--max-samples", "0"], "--max-samples"),
    ([*VALIDATE, "--amp", "fp8"], "--amp"),
    ([*VALIDATE, "--split", "test"], "--split"),
    (VALIDATE, "bad.pth"),
    (["validate", "--no-progress"], "--checkpoint"),
    # nat predict
    (["predict", "{dir}/missing.png"], "missing.png"),
    (["predict", "{file}", "--top-k", "0"], "--top-k"),
    (["predict", "{file}", "--checkpoint", "{file}"], "bad.pth"),
    # nat models / convert
    (["models", "--img-size", "0"], "--img-size"),
    (["models", "resnet50"], "resnet50"),
    (["convert", "{file}", "{dir}/out.safetensors"], "bad.pth"),
    (["convert", "{dir}/missing.pth", "{dir}/out.safetensors"], "missing.pth"),
    (["convert", "{file}", "{dir}/out", "--to", "onnx"], "--to"),
    # nat detect
    ([*DETECT, "--epochs", "0"], "epochs=0"),
    ([*DETECT, "--architecture", "yolo"], "architecture='yolo'"),
    ([*DETECT, "--set", "crop_range=[600, 384]"], "crop_range=[600, 384]"),
    ([*DETECT, "--set", "anchor_sizes=[32]"], "anchor_sizes=[32]"),
    ([*DETECT, "--set", "backbone_args=3"], "backbone_args=3"),
    ([*DETECT, "--config", "no_such_recipe"], "no_such_recipe"),
    ([*DETECT, "--data", "{dir}/missing"], "missing"),
    ([*DETECT, "--data", "{coco}"], "instances_train2017.json"),
    (["detect", "eval", "--checkpoint", "{file}"], "bad.pth"),
    (["detect", "eval", "--checkpoint", "{dir}/missing.pt"], "missing.pt"),
    (["detect", "eval"], "--checkpoint"),
    (["detect", "eval", "--checkpoint", "{file}", "--batch-size", "0"], "--batch-size"),
    (["detect", "predict", "{dir}/a.png", "--checkpoint", "{file}"], "bad.pth"),
    (["detect", "predict", "a.png", "--checkpoint", "{file}", "--score-thresh", "2"], "--score"),
    (["detect", "bogus"], "bogus"),
    (["models", "--task", "detection", "--img-size", "64"], "--img-size"),
    (["models", "--task", "detection", "resnet50"], "resnet50"),
    # nat bench
    ([*OPS, "--repeats", "0"], "--repeats"),
    ([*OPS, "--warmup", "-1"], "--warmup"),
    ([*OPS, "--threads", "0"], "--threads"),
    ([*OPS, "--dtype", "float32,bfloat16"], "--dtype"),
    ([*OPS, "--dtype", "float8"], "float8"),
    ([*OPS, "--shapes", "stage9"], "stage9"),
    ([*OPS, "--backends", "cuda_magic"], "cuda_magic"),
    ([*OPS, "--baselines", "flash"], "flash"),
    ([*OPS, "--modes", "sideways"], "sideways"),
    ([*MODELS, "--models", "bogus"], "bogus"),
    ([*MODELS, "--batch-sizes", "1,0"], "--batch-sizes"),
    ([*MODELS, "--train-batch", "0"], "--train-batch"),
    ([*MODELS, "--img-size", "-5"], "--img-size"),
    ([*MODELS, "--models", "test_vit", "--baseline", "test_convnext"], "test_convnext"),
    (["bench", "plot", "{file}", "--out", "{dir}/a.png"], "bad.pth"),
    (["bench", "plot", "{json}", "--out", "{dir}/a.png"], "other.json"),
    (["bench", "plot", "{dir}/missing.json", "--out", "{dir}/a.png"], "missing.json"),
    # nat saliency / neighborhood / plot
    (["saliency", "{dir}/missing.png"], "missing.png"),
    (["saliency", "{file}"], "bad.pth"),
    (["saliency", "{png}", "--models", "bogus"], "bogus"),
    (["saliency", "{png}", "--method", "cam"], "--method"),
    (["saliency", "{png}", "--checkpoint", "nat_tiny"], "NAME=PATH"),
    (["saliency", "{png}", "--models", "test_vit", "--checkpoint", "nat_tiny=x.pth"], "nat_tiny"),
    (
        ["saliency", "{png}", "--models", "test_vit", "--checkpoint", "test_vit={dir}/no.pth"],
        "no.pth",
    ),
    (["saliency", "{png}", "--img-size", "8"], "--img-size"),
    (["saliency", "{png}", "--samples", "0"], "--samples"),
    (["neighborhood"], "IMAGE"),
    (["neighborhood", "{png}", "--receptive-fields"], "IMAGE"),
    (["neighborhood", "--receptive-fields", "--size", "15"], "--size"),
    (["neighborhood", "{png}", "--query", "1"], "--query"),
    (["neighborhood", "{png}", "--query", "-1,2"], "--query"),
    (["neighborhood", "{png}", "--model", "bogus"], "bogus"),
    (["neighborhood", "{png}", "--model", "test_vit", "--img-size", "32"], "NAT/DiNAT"),
    (
        ["neighborhood", "{png}", "--model", "nat_mini", "--img-size", "64", "--level", "7"],
        "level=7",
    ),
    (
        ["neighborhood", "{png}", "--model", "nat_mini", "--img-size", "64", "--block", "9"],
        "block=9",
    ),
    (
        ["neighborhood", "{png}", "--model", "nat_mini", "--img-size", "64", "--query", "64,0"],
        "(64, 0)",
    ),
    (
        ["neighborhood", "{png}", "--model", "nat_mini", "--img-size", "64", "--head", "99"],
        "--head=99",
    ),
    (["plot", "--bench", "{file}"], "bad.pth"),
    (["plot", "--bench", "{json}"], "other.json"),
    (["plot", "--bench", "{dir}/missing.json"], "missing.json"),
    (["plot", "--points", "resnet18"], "resnet18"),
    (["plot", "--models", "bogus"], "bogus"),
    (["plot", "--warmup", "-1"], "--warmup"),
    # nat segment: bad data names the file, bad settings the setting (faults found while
    # reading, after training started: tests/tasks/segmentation/test_train.py)
    ([*SEGMENT, "--data", "{seg_missing}"], "00001.png has no mask"),
    ([*SEGMENT, "--data", "{dir}/missing"], "missing"),
    ([*SEGMENT, "--iterations", "3", "--eval-interval", "2"], "iterations=3"),
    ([*SEGMENT, "--set", "crop_size=8"], "crop_size=8"),
    ([*SEGMENT, "--backbone", "nat_huge"], "nat_huge"),
    ([*SEGMENT, "--config", "no_such_recipe"], "no_such_recipe"),
    (["segment", "eval", "{file}"], "bad.pth"),
    (["segment", "eval", "{dir}/missing.pt"], "missing.pt"),
    (["segment", "eval", "{file}", "--mode", "tiles"], "--mode"),
    (["segment", "eval", "{file}", "--scale", "0", "5"], "--scale"),
    (["segment", "predict", "{dir}/missing.png", "--checkpoint", "{file}"], "missing.png"),
    (["models", "--task", "painting"], "painting"),
    (["bogus-command"], "bogus-command"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "bad.pth").write_bytes(b"this is not a checkpoint")
    (root / "bad.yaml").write_text("epochs: [1, 2\nlr: 3\n")
    (root / "other.json").write_text('{"rows": []}')
    Image.new("RGB", (40, 30), (200, 40, 40)).save(root / "red.png")
    (root / "coco" / "annotations").mkdir(parents=True)
    (root / "coco" / "annotations" / "instances_train2017.json").write_text("{not json")
    return {
        "png": str(root / "red.png"),
        "file": str(root / "bad.pth"),
        "dir": str(root),
        "data": str(make_split_folder(root / "data", classes=2, train=2, val=1)),
        "json": str(root / "other.json"),
        "yaml": str(root / "bad.yaml"),
        "coco": str(root / "coco"),
        **_segmentation_folders(root),
    }


def _segmentation_folders(root: Path) -> dict[str, str]:
    """A mask folder whose second training image has no mask."""
    samples = [(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))] * 2
    folder = write_mask_folder(root / "seg", {"train": samples, "val": samples}, ["a", "b"])
    (folder / "masks/train/00001.png").unlink()
    return {"seg_missing": str(folder)}


@pytest.mark.parametrize(("argv", "named"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_value_is_one_line_naming_it(argv, named, places, capsys):
    argv = [word.format(**places) for word in argv]
    try:
        status = main(argv)
    except SystemExit as exit_:  # the parser's own errors
        status = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status not in (0, None), err
    assert len(lines) == 1, err
    assert named in lines[0], err


def test_a_closed_pipe_is_not_an_error():
    """``nat models | head -1``: the reader leaves before the output comes; no traceback, exit
    status 0. (The reader here reads nothing, so the write surely finds the pipe closed.)"""
    reader = "pass"
    nat = subprocess.Popen(
        [sys.executable, "-m", "nat", "models", "nat_mini", "nat_digits"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    head = subprocess.run([sys.executable, "-c", reader], stdin=nat.stdout, check=True)
    nat.stdout.close()
    _, err = nat.communicate(timeout=300)
    assert head.returncode == 0
    assert (nat.returncode, err.decode()) == (0, "")
