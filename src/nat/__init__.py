"""nat: Neighborhood Attention Transformers (NAT, DiNAT) and fast neighborhood attention."""

from . import models
from .nn import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D
from .ops import (
    attention,
    attention_weights,
    available_backends,
    merge_attentions,
    na1d,
    na2d,
    na3d,
    neighborhood_attention,
    query_attention_weights,
    use_backend,
)

__version__ = "0.1.0"

__all__ = [
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "__version__",
    "attention",
    "attention_weights",
    "available_backends",
    "merge_attentions",
    "models",
    "na1d",
    "na2d",
    "na3d",
    "neighborhood_attention",
    "query_attention_weights",
    "use_backend",
]
