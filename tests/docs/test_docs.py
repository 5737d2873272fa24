"""Every code block of the README and ``docs/`` runs, so a doc that drifts fails CI.

Python blocks run as written, in a fresh directory holding the files they name (synthetic
checkpoints with the published keys; the official ``nat_tiny.pth`` is put in PyTorch's download
cache, where timm looks first). Shell blocks run line by line, each through the small-data form of
its command given in ``SMALL``: the same command with placeholders (``/path/to/...``) pointing
at generated data and only arguments added that make it small (an epoch, a few images, one
repeat). A documented command missing from ``SMALL`` fails the coverage test.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nat.data.shapes import make_shapes_dataset
from nat.files import atomic_save
from nat.models import convert_checkpoint
from nat.segmentation import to_mmseg, upernet

from ..data.folders import make_ade20k_folder, make_split_folder
from ..models.synthetic import synthetic_state_dict

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
HAS_NATTEN = importlib.util.find_spec("natten") is not None

FAST = "--repeats 1 --warmup 0 --no-progress"
SEG_TRAIN = (
    "--iterations 2 --eval-interval 1 --set synthetic_train=8 --set synthetic_val=2 --workers 0 "
    "--no-progress"
)
TINY_TRAIN = "--epochs 1 --max-train-samples 8 --max-val-samples 4 --workers 0 --no-progress"
# the paper's detection recipe at 64 px, one step per process, one image evaluated
DETECT_SMALL = (
    "--epochs 1 --batch-size 1 --max-val-samples 1 --workers 0 --no-progress "
    "--set train_scales=[64] --set crop_scales=[64] --set crop_range=[48,64] --set max_size=96 "
    "--set eval_size=64 --set max_train_samples=2"
)
# documented command -> (the command the test runs, a message it must fail with or None)
SMALL: dict[str, tuple[str, str | None]] = {
    "make demo": ("make -n demo", None),
    "make test": ("make -n test", None),
    "nat bench ops": (f"nat bench ops --quick {FAST}", None),
    "nat bench ops --quick": (f"nat bench ops --quick {FAST}", None),
    "nat bench ops --quick --json ops.json --plot ops.png": (
        f"nat bench ops --quick --json ops.json --plot ops.png {FAST}",
        None,
    ),
    "nat bench ops --shapes stage1 --backends cpu --baselines wsa,natten --modes forward": (
        f"nat bench ops --shapes stage1 --backends cpu --baselines wsa,natten --modes forward "
        f"{FAST}",
        None if HAS_NATTEN else "needs NATTEN installed",
    ),
    "nat bench ops --json results/ops.json --plot results/ops.png": (
        f"nat bench ops --quick --json results/ops.json --plot results/ops.png {FAST}",
        None,
    ),
    "nat bench plot results/ops.json --out ops.png": (
        "nat bench plot results/ops.json --out ops.png",
        None,
    ),
    "nat bench models": (f"nat bench models --quick {FAST}", None),
    "nat bench models --quick": (f"nat bench models --quick {FAST}", None),
    "nat bench models --models nat_tiny,swin_tiny_patch4_window7_224 --dtype float32 --onnx": (
        f"nat bench models --quick --dtype float32 --onnx {FAST}",
        None,
    ),
    "nat bench models --models nat_tiny,swin_tiny_patch4_window7_224 --dtype float32 --compile": (
        f"nat bench models --quick --models test_vit --dtype float32 --batch-sizes 1 --compile "
        f"{FAST}",
        None,
    ),
    "nat bench models --models nat_tiny,swin_tiny_patch4_window7_224 --dtype bfloat16 "
    "--breakdown": (
        f"nat bench models --quick --models test_vit --dtype bfloat16 --batch-sizes 1 --breakdown "
        f"{FAST}",
        None,
    ),
    "nat bench models --dtype float32 --batch-sizes 8": (
        f"nat bench models --quick --dtype float32 --batch-sizes 8 {FAST}",
        None,
    ),
    "nat saliency china.jpg flower.jpg --method smoothgrad --samples 8 --dpi 60 "
    "--out docs/images/saliency.png": (
        "nat saliency china.jpg flower.jpg --method smoothgrad --samples 1 --dpi 60 "
        "--out docs/images/saliency.png --models test_vit --img-size 32",
        None,
    ),
    "nat neighborhood china.jpg --model dinat_tiny --level 1 --block 1 --query 60,100 "
    "--out docs/images/neighborhood.png": (
        "nat neighborhood china.jpg --model dinat_tiny --level 1 --block 1 --query 60,100 "
        "--out docs/images/neighborhood.png --img-size 112",
        None,
    ),
    "nat neighborhood --receptive-fields --out docs/images/receptive-fields.png": (
        "nat neighborhood --receptive-fields --out docs/images/receptive-fields.png",
        None,
    ),
    "nat plot --bench docs/benchmarks/models-cpu-run1.json --out docs/images/tradeoffs.png": (
        f"nat plot --bench {ROOT}/docs/benchmarks/models-cpu-run1.json "
        "--out docs/images/tradeoffs.png --points nat_mini,swin_tiny_patch4_window7_224",
        None,
    ),
    "nat train": (f"nat train --output run-digits --batch-size 8 {TINY_TRAIN}", None),
    "nat train --model resnet18 --data /path/to/folder --epochs 30": (
        f"nat train --model resnet18 --data {{folder}} --epochs 1 --input-size 32 --batch-size 4 "
        f"--output run-resnet {TINY_TRAIN}",
        None,
    ),
    "torchrun --nproc_per_node 8 -m nat train --config nat_tiny --data /path/to/imagenet": (
        f"torchrun --nproc_per_node 2 -m nat train --config nat_tiny --data {{imagenet}} "
        f"--input-size 64 --batch-size 2 --output run-ddp {TINY_TRAIN}",
        None,
    ),
    "nat validate --model nat_tiny --checkpoint nat_tiny.pth --data /path/to/imagenet": (
        "nat validate --model nat_tiny --checkpoint nat_tiny.pth --data {imagenet} "
        "--max-samples 2 --workers 0 --no-progress",
        None,
    ),
    "nat predict cat.jpg --model nat_tiny --checkpoint nat_tiny.pth --json": (
        "nat predict cat.jpg --model nat_tiny --checkpoint nat_tiny.pth --json",
        None,
    ),
    "nat models": ("nat models", None),
    "nat convert nat_tiny.pth nat_tiny.safetensors": (
        "nat convert nat_tiny.pth nat_tiny.safetensors",
        None,
    ),
    "nat convert nat_tiny.safetensors nat-tiny-hf --to hf": (
        "nat convert nat_tiny.safetensors nat-tiny-hf --to hf",
        None,
    ),
    "nat convert nat_tiny_maskrcnn.pth backbone.safetensors": (
        "nat convert nat_tiny_maskrcnn.pth backbone.safetensors",
        None,
    ),
    "nat detect train --output runs/shapes": (
        "nat detect train --output runs/shapes --epochs 1 --set synthetic_images=[8,4] "
        "--no-progress",
        None,
    ),
    "nat detect eval --checkpoint runs/shapes/last.pt": (
        "nat detect eval --checkpoint runs/shapes/last.pt --no-progress",
        None,
    ),
    "nat detect predict runs/shapes/shapes/val2017/000001.png --checkpoint runs/shapes/last.pt": (
        "nat detect predict runs/shapes/shapes/val2017/000001.png --checkpoint runs/shapes/last.pt",
        None,
    ),
    "nat models --task detection": ("nat models --task detection nat_mini", None),
    "torchrun --nproc_per_node 8 -m nat detect train --config coco_3x --backbone nat_tiny "
    "--data /path/to/coco": (
        "torchrun --nproc_per_node 2 -m nat detect train --config coco_3x --backbone nat_tiny "
        f"--data {{coco}} --output run-detect {DETECT_SMALL}",
        None,
    ),
    "nat detect eval --checkpoint nat_tiny_maskrcnn.pth --architecture mask_rcnn "
    "--backbone nat_tiny --data /path/to/coco": (
        "nat detect eval --checkpoint nat_tiny_maskrcnn.pth --architecture mask_rcnn "
        "--backbone nat_tiny --data {coco} --max-samples 1 --no-progress",
        None,
    ),
    "nat export nat_tiny --checkpoint nat_tiny.pth --format onnx --output nat_tiny.onnx "
    "--batch dynamic": (
        "nat export nat_tiny --checkpoint nat_tiny.pth --format onnx --output nat_tiny.onnx "
        "--batch dynamic --input-size 64 64",
        None,
    ),
    "nat segment train --output runs/seg-demo": (
        f"nat segment train --output runs/seg-demo {SEG_TRAIN}",
        None,
    ),
    "nat segment eval runs/seg-demo/last.pt --multi-scale --flip --json seg-eval.json": (
        "nat segment eval runs/seg-demo/last.pt --multi-scale --flip --json seg-eval.json "
        "--workers 0 --no-progress",
        None,
    ),
    "nat segment predict scene.png --checkpoint runs/seg-demo/last.pt --out predictions": (
        "nat segment predict scene.png --checkpoint runs/seg-demo/last.pt --out predictions",
        None,
    ),
    "nat models --task segmentation": ("nat models --task segmentation nat_mini", None),
    "torchrun --nproc_per_node 8 -m nat segment train --config upernet_nat_tiny "
    "--data /path/to/ADEChallengeData2016": (
        "torchrun --nproc_per_node 2 -m nat segment train --config upernet_nat_tiny "
        "--data {ade20k} --set pretrained=false --set crop_size=32 --set scale=[64,32] "
        f"--output run-seg-ddp --batch-size 2 --max-val-samples 1 {SEG_TRAIN}",
        None,
    ),
    "nat segment eval nat_tiny_upernet.pth --backbone nat_tiny "
    "--data /path/to/ADEChallengeData2016 --multi-scale --flip": (
        "nat segment eval nat_tiny_upernet.pth --backbone nat_tiny --data {ade20k} --multi-scale "
        "--flip --scale 64 32 --max-samples 1 --workers 0 --no-progress",
        None,
    ),
    "nat export dinat_tiny --format exported-program --output dinat_tiny.pt2 "
    "--input-size 256 256": (
        "nat export dinat_tiny --format exported-program --output dinat_tiny.pt2 "
        "--input-size 64 64",
        None,
    ),
}


def _blocks() -> list[tuple[str, str, str]]:
    """``(id, language, text)`` of every fenced block (``text`` blocks show output: left out)."""
    found = []
    for doc in DOCS:
        for i, match in enumerate(FENCE.finditer(doc.read_text())):
            if match.group(1) in ("bash", "python"):
                found.append((f"{doc.name}:{i}", match.group(1), match.group(2)))
    return found


def _commands(text: str) -> list[str]:
    """The commands of a shell block: one a line, comments and blank lines left out."""
    lines = (line.split("  #")[0].split(" # ")[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


BLOCKS = _blocks()


def test_every_documented_command_has_a_small_form():
    documented = {c for _, lang, text in BLOCKS if lang == "bash" for c in _commands(text)}
    assert documented == set(SMALL)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Synthetic checkpoints in the published layouts (original, mmdetection, a Hugging Face hub
    directory), made once."""
    root = tmp_path_factory.mktemp("published")
    for name, file in (
        ("nat_tiny", "nat_tiny.pth"),
        ("dinat_tiny", "dinat_tiny_in1k_224.pth"),
        ("dinat_mini", "dinat_mini_in1k_224.pth"),
    ):
        atomic_save(synthetic_state_dict(name), root / file)
    backbone = {f"backbone.{k}": v for k, v in synthetic_state_dict("nat_tiny_backbone").items()}
    neck = {"neck.lateral_convs.0.conv.weight": torch.zeros(256, 64, 1, 1)}
    atomic_save({"meta": {}, "state_dict": {**backbone, **neck}}, root / "mm.pth")
    convert_checkpoint(
        root / "dinat_mini_in1k_224.pth", root / "shi-labs" / "dinat-mini-in1k-224", "hf"
    )
    upernet_tiny = to_mmseg(upernet("nat_tiny", 150).state_dict())
    atomic_save({"meta": {}, "state_dict": upernet_tiny}, root / "nat_tiny_upernet.pth")
    return root


@pytest.fixture
def workdir(tmp_path, published):
    """A fresh directory with the files the docs name, and the environment to run them in."""
    for name in ("nat_tiny.pth", "dinat_tiny_in1k_224.pth"):
        os.symlink(published / name, tmp_path / name)
    os.symlink(published / "mm.pth", tmp_path / "nat_tiny_maskrcnn.pth")
    os.symlink(published / "nat_tiny_upernet.pth", tmp_path / "nat_tiny_upernet.pth")
    os.symlink(published / "shi-labs", tmp_path / "shi-labs")
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    os.symlink(published / "nat_tiny.pth", cache / "nat_tiny.pth")
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for name in ("cat.jpg", "china.jpg", "flower.jpg", "scene.png"):
        Image.fromarray(pixels).save(tmp_path / name)
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch-home"), "PYTHONUNBUFFERED": "1"}
    places = {
        "folder": str(make_split_folder(tmp_path / "folder", classes=2, train=4, val=2)),
        "imagenet": str(make_split_folder(tmp_path / "imagenet", classes=3, train=4, val=2)),
        "coco": str(make_shapes_dataset(tmp_path / "coco", train_images=4, val_images=2, size=64)),
        "ade20k": str(make_ade20k_folder(tmp_path / "ade20k")),
    }
    return tmp_path, env, places


def _run(argv: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize(("where", "lang", "text"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_block_runs(where, lang, text, workdir):
    cwd, env, places = workdir
    if lang == "python":
        done = _run([sys.executable, "-c", text], cwd, env)
        assert done.returncode == 0, done.stderr[-3000:]
        return
    for command in _commands(text):
        small, failure = SMALL[command]
        argv = shlex.split(small.format(**places))
        if argv[0] == "make":
            argv = ["make", "-C", str(ROOT), *argv[1:]]
        elif argv[0] == "nat":
            argv = [sys.executable, "-m", "nat", *argv[1:]]
        elif argv[0] == "torchrun":
            argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
        done = _run(argv, cwd, env)
        if failure is None:
            assert done.returncode == 0, f"{small}\n{done.stderr[-3000:]}"
        else:
            assert done.returncode != 0 and failure in done.stderr, done.stderr[-3000:]


def test_relative_links_point_at_files():
    link = re.compile(r"\]\(([^)#:]+)\)")
    for doc in DOCS:
        for target in link.findall(doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
