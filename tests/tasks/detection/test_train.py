"""Training on generated shapes: the loss falls, a few images are learnt to a high mAP, a
checkpoint evaluates end to end through the COCO evaluator, predictions are drawn, runs resume,
and two processes (gloo) train a step together."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from nat.data.coco import CocoInstances, detection_collate, detection_eval_transform
from nat.data.shapes import make_shapes_dataset
from nat.engine import DistEnv, eval_loader
from nat.tasks.detection import (
    DetectConfig,
    LoadedDetector,
    create_detector,
    evaluate,
    evaluate_checkpoint,
    load_detector,
    predict,
    train,
)
from nat.tasks.detection.train import create_optimizer, step_schedule

from .tiny import TINY_SETTINGS


def _fixed_batches(root: Path, count: int) -> tuple[CocoInstances, list]:
    data = CocoInstances(
        root / "train2017",
        root / "annotations" / "instances_train2017.json",
        transforms=detection_eval_transform(),
    )
    batches = []
    for start in range(0, count, 2):
        images, targets = detection_collate([data[i] for i in range(start, start + 2)])
        plain = [{k: _plain(v) for k, v in t.items()} for t in targets]
        batches.append((images, plain))
    return data, batches


def _plain(value):
    return value.as_subclass(torch.Tensor) if torch.is_tensor(value) else value


def _steps(model, batches, steps: int, lr: float = 1e-3) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for step in range(steps):
        images, targets = batches[step % len(batches)]
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = DetectConfig(**TINY_SETTINGS).model_kwargs()
    return create_detector("mask_rcnn", "nat_mini", 4, **kwargs)


def test_the_schedule_warms_up_then_steps_down_after_each_milestone():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    config = DetectConfig(milestones=[2, 3], warmup_iters=4, warmup_ratio=0.001)
    schedule = step_schedule(optimizer, config, updates_per_epoch=10)
    lrs = [optimizer.param_groups[0]["lr"]]  # lrs[u]: the lr of update u + 1
    for update in range(1, 40):
        schedule.step_update(num_updates=update)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.001) and lrs[2] == pytest.approx(0.5005)
    assert lrs[4] == lrs[19] == 1.0  # warmed up, until the last update of epoch 2
    assert lrs[20] == pytest.approx(0.1) and lrs[29] == pytest.approx(0.1)
    assert lrs[30] == pytest.approx(0.01)


def test_norms_biases_and_rpb_tables_get_no_weight_decay():
    model = _tiny_model()
    optimizer = create_optimizer(model, DetectConfig(), lr=1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {
        names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]
    }
    decayed = {
        names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]
    }
    assert any(n.endswith(".rpb") for n in undecayed) and any("norm" in n for n in undecayed)
    assert not any(n.endswith((".rpb", ".bias")) or "norm" in n for n in decayed)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.05}


def test_training_steps_reduce_the_loss(tmp_path):
    _, batches = _fixed_batches(
        make_shapes_dataset(tmp_path, train_images=2, val_images=1, size=64), 2
    )
    losses = _steps(_tiny_model(), batches, 12)
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3


@pytest.fixture(scope="module")
def learnt(tmp_path_factory):
    """A tiny Mask R-CNN trained briefly on four shapes images, and its COCO scores on them."""
    root = make_shapes_dataset(
        tmp_path_factory.mktemp("few"), train_images=4, val_images=1, size=64
    )
    data, batches = _fixed_batches(root, 4)
    model = _tiny_model()
    _steps(model, batches, STEPS)
    loader = eval_loader(data, 2, DistEnv(), workers=0, collate_fn=detection_collate)
    scores, _ = evaluate(model, loader, data, DistEnv())
    return model, data, scores


STEPS = 80


def test_a_few_images_are_learnt_to_a_high_map(learnt):
    _, _, scores = learnt
    assert scores["bbox_AP50"] > 80 and scores["segm_AP50"] > 80, scores


def test_predict_draws_boxes_labels_and_masks_into_a_png(learnt, tmp_path):
    model, data, _ = learnt
    loaded = LoadedDetector(model, DetectConfig(**TINY_SETTINGS), data.categories, tmp_path)
    image = data.images / data.coco.imgs[data.ids[0]]["file_name"]
    (result,) = predict(loaded, [image], output_dir=tmp_path, score_thresh=0.5)
    with Image.open(result["output"]) as drawn:
        assert drawn.size == (64, 64)
    assert {d["label"] for d in result["detections"]} <= set(data.categories)
    assert result["detections"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``train`` with the shapes made on the spot: one epoch of the tiny settings."""
    out = tmp_path_factory.mktemp("run") / "run"
    return train(DetectConfig(**TINY_SETTINGS, output=str(out)), progress=False)


def test_a_checkpoint_evaluates_end_to_end_and_writes_coco_results(run, tmp_path):
    loaded = load_detector(run.output / "last.pt")
    results = tmp_path / "detections.json"
    scores = evaluate_checkpoint(loaded, results=results, progress=False)
    assert scores["bbox_AP"] == pytest.approx(run.summary["bbox_AP"])
    assert scores["images"] == TINY_SETTINGS["synthetic_images"][1]
    detections = json.loads(results.read_text())
    assert len(detections) == scores["detections"]
    if detections:
        assert set(detections[0]) == {"image_id", "category_id", "bbox", "score", "segmentation"}


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    settings = {**TINY_SETTINGS, "epochs": 2, "max_val_samples": 1}
    whole = train(DetectConfig(**settings, output=str(tmp_path / "whole")), progress=False)
    train(DetectConfig(**{**settings, "epochs": 1}, output=str(tmp_path / "part")), progress=False)
    resumed = train(DetectConfig(**settings, output=str(tmp_path / "part")), progress=False)
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_two_processes_train_a_step(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    script = Path(__file__).with_name("ddp_train.py")
    proc = subprocess.run(
        [*cmd, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 1
