"""The neighborhood attention operator: functional API, backends and their dispatcher."""

from .dispatch import available_backends, default_backend, register_backend, use_backend
from .functional import attention, merge_attentions, na1d, na2d, na3d, neighborhood_attention

__all__ = [
    "attention",
    "available_backends",
    "default_backend",
    "merge_attentions",
    "na1d",
    "na2d",
    "na3d",
    "neighborhood_attention",
    "register_backend",
    "use_backend",
]
