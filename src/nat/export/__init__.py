"""Deployment: NAT/DiNAT (and any model on neighborhood attention) as ``torch.export`` programs
and as ONNX files of standard operators that onnxruntime runs with no custom op.

- :mod:`.program`: ``torch.export`` with the NA op kept as one node, dynamic batch, save/load;
- :mod:`.na_onnx`: the NA op's translation to standard ONNX operators;
- :mod:`.onnx_file`: ONNX files and running them in onnxruntime;
- :mod:`.model`: export an image model to a file and check the file (``nat export``).

``onnx``, ``onnxruntime`` and ``onnxscript`` come with the ``export`` extra.
"""

from .model import (
    FORMATS,
    TOLERANCE,
    ExportResult,
    export_model,
    image_input,
    largest_difference,
    min_dynamic_size,
)
from .onnx_file import MIN_OPSET, export_onnx, onnx_program, onnx_session, run_onnx
from .program import export_program, load_program, na_nodes, save_program

__all__ = [
    "FORMATS",
    "MIN_OPSET",
    "TOLERANCE",
    "ExportResult",
    "export_model",
    "export_onnx",
    "export_program",
    "image_input",
    "largest_difference",
    "load_program",
    "min_dynamic_size",
    "na_nodes",
    "onnx_program",
    "onnx_session",
    "run_onnx",
    "save_program",
]
