"""``nat saliency``, ``nat neighborhood`` and ``nat plot`` write their figures."""

from __future__ import annotations

from pathlib import Path

import pytest

import nat.viz
from nat.cli import main

BENCH = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "models-cpu-run1.json"


@pytest.fixture
def image_file(picture, tmp_path):
    path = tmp_path / "picture.png"
    picture.save(path)
    return path


@pytest.fixture
def titles(monkeypatch):
    """The title of every figure the command saves (besides saving it)."""
    seen = []
    save = nat.viz.save_figure

    def recording(fig, *args, **kwargs):
        seen.append(fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title())
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(nat.viz, "save_figure", recording)
    return seen


def test_saliency_writes_light_and_dark_and_says_the_weights_are_random(
    image_file, tmp_path, titles, capsys
):
    out = tmp_path / "maps.png"
    argv = ["saliency", str(image_file), str(image_file), "--models", "test_vit", "nat_mini"]
    assert main([*argv, "--img-size", "32", "--out", str(out)]) == 0
    for theme in ("light", "dark"):
        assert (tmp_path / f"maps-{theme}.png").stat().st_size > 1000
    assert len(titles) == 2
    assert all("random weights" in t and "test_vit, nat_mini" in t for t in titles)
    assert "maps-dark.png" in capsys.readouterr().out


def test_neighborhood_and_receptive_fields(image_file, tmp_path, titles):
    argv = ["neighborhood", str(image_file), "--model", "dinat_mini", "--img-size", "64"]
    out = tmp_path / "view.png"
    assert main([*argv, "--level", "0", "--block", "1", "--query", "0,0", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert "random weights" in titles[0] and "dilation 8x8" in titles[0]
    rf = tmp_path / "rf.png"
    assert main(["neighborhood", "--receptive-fields", "--out", str(rf)]) == 0
    assert rf.stat().st_size > 1000


def test_plot_reads_a_benchmark_and_writes_png_and_svg(tmp_path, capsys):
    out = tmp_path / "tradeoffs.png"
    points = "nat_mini,swin_tiny_patch4_window7_224"
    assert main(["plot", "--bench", str(BENCH), "--points", points, "--out", str(out)]) == 0
    assert out.stat().st_size > 1000 and out.with_suffix(".svg").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "nat_mini: top-1 81.8" in printed and "MiB" in printed
