"""The benchmark suite: neighborhood attention against its baselines, NAT against Swin/ConvNeXt.

``run_ops`` and ``run_models`` return JSON-ready dicts (raw repeats, medians, ratios, machine);
``format_result`` prints them as Markdown tables and ``plot_result`` draws them.
"""

from .harness import Measurement, machine_info, measure_group, peak_memory
from .models import run_models
from .ops import OpShape, run_ops, shapes_by_name
from .plot import plot_result
from .report import format_result, write_json

__all__ = [
    "Measurement",
    "OpShape",
    "format_result",
    "machine_info",
    "measure_group",
    "peak_memory",
    "plot_result",
    "run_models",
    "run_ops",
    "shapes_by_name",
    "write_json",
]
