"""Figures of what the models see: salient maps, neighbourhoods, receptive fields, trade-offs.

Each figure has a function returning its arrays and one drawing them (a matplotlib figure); the
``nat saliency``, ``nat neighborhood`` and ``nat plot`` commands call the same functions. Needs
the ``viz`` extra (matplotlib, captum).

- :mod:`.models`: the models looked at (timm's and NAT/DiNAT, random or from a checkpoint) and
  their input;
- :mod:`.saliency`: gradient salient maps (captum) side by side;
- :mod:`.neighborhood`: one query's neighbourhood and attention weights in a NAT/DiNAT block;
- :mod:`.receptive_fields`: self-attention, Swin windows, NA and dilated NA, from their masks;
- :mod:`.tradeoffs`: top-1 against GMACs, training memory and throughput;
- :mod:`.canvas`: matplotlib, themes, image files.
"""

from .canvas import THEMES, load_image, save_figure
from .models import create_model, model_input
from .neighborhood import NeighborhoodView, block_neighborhood, draw_neighborhood
from .receptive_fields import KINDS, draw_receptive_fields, receptive_field, receptive_fields
from .saliency import METHODS, SalientMap, draw_saliency, salient_map
from .tradeoffs import TradeoffPoint, draw_tradeoffs, machine_label, measure, tradeoff_points

__all__ = [
    "KINDS",
    "METHODS",
    "THEMES",
    "NeighborhoodView",
    "SalientMap",
    "TradeoffPoint",
    "block_neighborhood",
    "create_model",
    "draw_neighborhood",
    "draw_receptive_fields",
    "draw_saliency",
    "draw_tradeoffs",
    "load_image",
    "machine_label",
    "measure",
    "model_input",
    "receptive_field",
    "receptive_fields",
    "salient_map",
    "save_figure",
    "tradeoff_points",
]
