"""Small NAT/DiNAT models for the export tests (seconds to export)."""

from __future__ import annotations

import timm
import torch

from nat.models import NAT, NATBackbone

_TINY = dict(embed_dim=16, mlp_ratio=2, depths=(2, 2), num_heads=(2, 4), kernel_size=3)
_DILATIONS = [[1, 2], [1, 1]]


def nat_digits() -> NAT:
    torch.manual_seed(0)
    return timm.create_model("nat_digits").eval()


def tiny_dinat() -> NAT:
    """Two levels, a dilated block at the first; no config (needs an input size)."""
    torch.manual_seed(0)
    return NAT(**_TINY, dilations=_DILATIONS, num_classes=5).eval()


def tiny_backbone() -> NATBackbone:
    torch.manual_seed(0)
    return NATBackbone(**_TINY, dilations=_DILATIONS).eval()
