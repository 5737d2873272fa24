"""NAT and DiNAT models, registered with timm on import (``timm.create_model("nat_tiny")``).

- :mod:`.nat`: the architecture (:class:`NATTrunk`, and on it :class:`NAT` and
  :class:`NATBackbone`) and the timm variants;
- :mod:`.formats`: checkpoint files and key layouts (original, mm*, Hugging Face, safetensors);
- :mod:`.pretrained`: loading checkpoints into models, building models from them, converting;
- :mod:`.summary`: parameter and MAC counts, the paper's table.
"""

from .formats import detect_layout, read_checkpoint, to_original
from .nat import NAT, NATBackbone, NATBlock, NATLevel, NATTrunk, checkpoint_filter_fn
from .pretrained import (
    LoadResult,
    PretrainedDownloadError,
    convert_checkpoint,
    identify_variant,
    load_model,
    load_pretrained,
    load_state_dict_strict,
    model_args,
)
from .summary import count_gmacs, count_params, model_table

__all__ = [
    "NAT",
    "LoadResult",
    "NATBackbone",
    "NATBlock",
    "NATLevel",
    "NATTrunk",
    "PretrainedDownloadError",
    "checkpoint_filter_fn",
    "convert_checkpoint",
    "count_gmacs",
    "count_params",
    "detect_layout",
    "identify_variant",
    "load_model",
    "load_pretrained",
    "load_state_dict_strict",
    "model_args",
    "model_table",
    "read_checkpoint",
    "to_original",
]
