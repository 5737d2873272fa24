"""``nat detect train | eval | predict`` and ``nat models --task detection`` in-process."""

from __future__ import annotations

import json

import yaml

from nat.cli import main

from .tiny import TINY_SETTINGS


def test_train_eval_predict(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_SETTINGS, "max_val_samples": 2}))
    run = tmp_path / "run"
    assert main(["detect", "train", "--config", str(recipe), "--output", str(run), "--json",
                 "--no-progress", "--set", "synthetic_images=[4, 2]"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 1 and "segm_AP" in summary

    assert main(["detect", "eval", "--checkpoint", str(run / "last.pt"), "--json",
                 "--no-progress", "--max-samples", "2"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 2 and (run / "detections.json").is_file()

    image = run / "shapes" / "val2017" / "000001.png"
    out = tmp_path / "drawn"
    assert main(["detect", "predict", str(image), "--checkpoint", str(run / "last.pt"),
                 "--output-dir", str(out), "--score-thresh", "0.01"]) == 0  # fmt: skip
    assert "000001_detections.png" in capsys.readouterr().out
    assert (out / "000001_detections.png").is_file()


def test_models_table_shows_the_papers_figures(capsys):
    assert main(["models", "--task", "detection", "nat_mini"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line.split() for line in lines if line.startswith("mask_rcnn"))
    assert row[:6] == ["mask_rcnn", "nat_mini", "39.6M", "40M", "225", "225"]
