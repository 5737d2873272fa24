"""The neighborhood attention operator: functional API, backends and their dispatcher."""

from .dispatch import available_backends, default_backend, register_backend, use_backend
from .functional import attention, merge_attentions, na1d, na2d, na3d, neighborhood_attention
from .weights import attention_weights, neighbors, query_attention_weights

__all__ = [
    "attention",
    "attention_weights",
    "available_backends",
    "default_backend",
    "merge_attentions",
    "na1d",
    "na2d",
    "na3d",
    "neighborhood_attention",
    "neighbors",
    "query_attention_weights",
    "register_backend",
    "use_backend",
]
