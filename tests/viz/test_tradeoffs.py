"""The trade-off plot: published top-1, counted GMACs, the benchmark's memory and throughput."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nat.viz import draw_tradeoffs, machine_label, measure, save_figure, tradeoff_points

BENCH = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "models-cpu-run1.json"
NAMES = ["nat_mini", "swin_tiny_patch4_window7_224", "dinat_mini"]


def test_points_read_the_benchmark_and_count_gmacs():
    bench = json.loads(BENCH.read_text())
    points = {p.model: p for p in tradeoff_points(bench, NAMES)}
    train = next(
        r for r in bench["rows"]
        if r["model"] == "nat_mini" and r["task"] == "train" and r["dtype"] == "float32"
    )  # fmt: skip
    assert points["nat_mini"].train_peak_mib == pytest.approx(train["peak_bytes"] / 2**20)
    assert points["nat_mini"].images_per_s > 0
    assert points["dinat_mini"].train_peak_mib is None  # not benchmarked
    assert points["swin_tiny_patch4_window7_224"].gmacs == pytest.approx(4.5, abs=0.05)
    assert points["nat_mini"].top1 == 81.8


def test_the_figure_names_the_machine_in_png_and_svg(tmp_path):
    bench = json.loads(BENCH.read_text())
    label = machine_label(bench)
    assert bench["machine"]["cpu"] in label
    fig = draw_tradeoffs(tradeoff_points(bench, NAMES), label)
    files = save_figure(fig, tmp_path / "tradeoffs", ("png", "svg"))
    assert [f.suffix for f in files] == [".png", ".svg"]
    assert bench["machine"]["cpu"] in files[1].read_text()


def test_without_a_result_it_measures():
    bench = measure(["nat_mini"], img_size=32, batch_size=1, train_batch=1, repeats=1, warmup=0)
    (point,) = tradeoff_points(bench, ["nat_mini"])
    assert point.train_peak_mib > 0 and point.images_per_s > 0


def test_a_model_without_a_published_accuracy_is_refused():
    with pytest.raises(ValueError, match="'resnet18'"):
        tradeoff_points(None, ["resnet18"])


def test_a_result_of_another_benchmark_is_refused():
    with pytest.raises(ValueError, match="nat bench models"):
        tradeoff_points({"benchmark": "ops", "rows": []}, ["nat_mini"])
