"""Layers built on the neighborhood attention operator, and the linear and norm they use."""

from .attention import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D
from .linear import Linear, cpu_linear_backend, set_cpu_linear_backend, use_nat_linear
from .norm import LayerNorm

__all__ = [
    "LayerNorm",
    "Linear",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "cpu_linear_backend",
    "set_cpu_linear_backend",
    "use_nat_linear",
]
