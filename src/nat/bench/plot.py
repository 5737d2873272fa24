"""Bar charts of benchmark results (PNG, matplotlib; ``pip install nat[plot]``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_result"]


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise RuntimeError("plotting needs matplotlib: pip install 'nat[plot]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grouped_bars(ax, groups: list[str], series: dict[str, list[float | None]], log: bool) -> None:
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        heights = [0.0 if v is None else v for v in values]
        ax.bar(xs, heights, width, label=label)
    ax.set_xticks(range(len(groups)), groups)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)


def _plot_ops(result: dict, plt):
    rows = [r for r in result["rows"] if not r["error"]]
    shapes = list(dict.fromkeys(r["shape"] for r in result["rows"]))
    measured = {r["method"] for r in result["rows"]}
    methods = [m for m in result["settings"]["methods"] if m in measured]
    index = {(r["shape"], r["method"], r["mode"]): r for r in rows}
    panels = [
        ("forward", "median_ms", "forward time (ms)", True),
        ("forward+backward", "median_ms", "forward+backward time (ms)", True),
        ("forward", "peak_bytes", "forward peak memory (MiB)", True),
        ("forward+backward", "peak_bytes", "forward+backward peak memory (MiB)", True),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(max(10, 2.0 * len(shapes) + 4), 8))
    for ax, (mode, field, title, log) in zip(axes.flat, panels, strict=True):
        series = {}
        for method in methods:
            values = []
            for shape in shapes:
                row = index.get((shape, method, mode))
                value = None if row is None else row[field]
                if value is not None and field == "peak_bytes":
                    value /= 2**20
                values.append(value)
            series[method] = values
        _grouped_bars(ax, shapes, series, log)
        ax.set_title(title)
    axes.flat[0].legend(fontsize="small")
    return fig


def _plot_models(result: dict, plt):
    rows = [r for r in result["rows"] if not r["error"]]
    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    groups = [
        (r_dtype, task)
        for r_dtype in result["settings"]["dtypes"]
        for task in [*(f"infer_b{b}" for b in result["settings"]["batch_sizes"]), "train"]
    ]
    index = {(r["model"], r["dtype"], r["task"]): r for r in rows}
    panels = [
        ([g for g in groups if g[1] != "train"], "images_per_s", "inference images/s"),
        ([g for g in groups if g[1] == "train"], "median_ms", "training step (ms)"),
        ([g for g in groups if g[1] == "train"], "peak_bytes", "training step peak memory (MiB)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, (panel_groups, field, title) in zip(axes, panels, strict=True):
        series = {}
        for model in models:
            values = []
            for dtype, task in panel_groups:
                row = index.get((model, dtype, task))
                value = None if row is None else row[field]
                if value is not None and field == "peak_bytes":
                    value /= 2**20
                values.append(value)
            series[model] = values
        _grouped_bars(ax, [f"{d}\n{t}" for d, t in panel_groups], series, log=False)
        ax.set_title(title)
    axes[0].legend(fontsize="small")
    return fig


def plot_result(result: dict, path: str | Path) -> Path:
    """Draw an ``ops`` or ``models`` result as bar charts into the PNG file ``path``."""
    plt = _pyplot()
    fig = _plot_ops(result, plt) if result["benchmark"] == "ops" else _plot_models(result, plt)
    machine = result["machine"]
    fig.suptitle(
        f"nat bench {result['benchmark']}: {machine['cpu']}, {machine['torch_threads']} threads, "
        f"torch {machine['torch']}",
        fontsize="medium",
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
