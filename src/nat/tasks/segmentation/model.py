"""UPerNet for semantic segmentation on segmentation_models_pytorch's parts, as in the paper.

The model joins smp's timm encoder (``tu-<backbone>``; for NAT/DiNAT a
:class:`nat.models.NATBackbone` whose four outputs are already layer-normed) and smp's UPerNet
decoder (pyramid pooling 1, 2, 3, 6 on the last level, FPN fusion of all four, BatchNorm) with
mmsegmentation's classifier (dropout 0.1, 1x1 conv) and auxiliary FCN head on the third level
(one 3x3 conv-BN-ReLU, dropout 0.1, 1x1 conv), used only in training. Logits come back at the
input's resolution (bilinear, no corner alignment).
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base.modules import Conv2dReLU
from torch import nn

from ...models import NATBackbone
from .config import SegmentConfig

__all__ = ["FCNHead", "UPerNet", "build_model", "sync_batchnorm", "upernet"]

_SMP_SKIPPED = 2
"""smp's encoders put the input and a 1/2-scale map before the four levels UPerNet uses."""


class FCNHead(nn.Module):
    """The auxiliary head: 3x3 conv-BN-ReLU, dropout, 1x1 classifier.
    ``[B, in_channels, h, w]`` -> ``[B, num_classes, h, w]``."""

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.conv = Conv2dReLU(in_channels, channels, kernel_size=3, padding=1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class UPerNet(nn.Module):
    """Encoder -> UPerNet decoder -> dropout -> 1x1 classifier, plus the auxiliary head.

    ``forward``: ``[B, 3, H, W]`` -> logits ``[B, num_classes, H, W]``; in training mode with an
    auxiliary head, ``(logits, aux_logits)`` (both ``[B, num_classes, H, W]``).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        num_classes: int,
        *,
        channels: int,
        dropout: float,
        aux_head: FCNHead | None,
        aux_level: int,
        backbone: str,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.aux_head = aux_head
        self.aux_level = aux_level
        self.num_classes = num_classes
        self.backbone = backbone

    @property
    def levels(self) -> int:
        """How many feature levels the decoder fuses."""
        return len(self.encoder.out_channels) - _SMP_SKIPPED

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        logits = self._resize(self.classifier(self.dropout(self.decoder(features))), x)
        if not (self.training and self.aux_head is not None):
            return logits
        aux = self.aux_head(features[_SMP_SKIPPED + self.aux_level])
        return logits, self._resize(aux, x)

    @staticmethod
    def _resize(logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(logits, size=like.shape[-2:], mode="bilinear", align_corners=False)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The backbone's exempt parameters (NAT: the RPB tables); timm's optimizer factory also
        exempts every 1-D parameter (norms, biases)."""
        trunk = self.encoder.model
        own = trunk.no_weight_decay() if hasattr(trunk, "no_weight_decay") else set()
        return {f"encoder.model.{name}" for name in own}


def upernet(
    backbone: str = "nat_tiny",
    num_classes: int = 150,
    *,
    pretrained: bool = False,
    channels: int = 512,
    dropout: float = 0.1,
    aux: bool = True,
    aux_channels: int = 256,
    aux_level: int = 2,
    drop_path_rate: float | None = None,
    **backbone_kwargs: Any,
) -> UPerNet:
    """UPerNet on any timm backbone with four feature levels (``nat_tiny``, ``dinat_small``,
    ``convnext_tiny``, ...), configured as the paper's: ``channels`` 512, dropout 0.1, the
    auxiliary FCN head (``aux_channels`` 256) on level ``aux_level`` (the third).

    ``pretrained``: the backbone's timm (ImageNet) weights; ``drop_path_rate`` and
    ``backbone_kwargs`` go to ``timm.create_model``. smp's layer norms on the encoder outputs are
    left out for NAT/DiNAT, whose backbone ends every output level in its own ``norm{i}``.
    """
    if not timm.is_model(backbone):
        close = timm.list_models(f"*{backbone.split('_')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"backbone={backbone!r} is not a timm model{hint}")
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout} must be in [0, 1)")
    if drop_path_rate is not None:
        backbone_kwargs["drop_path_rate"] = drop_path_rate
    net = smp.UPerNet(
        f"tu-{backbone}",
        encoder_weights=True if pretrained else None,
        decoder_channels=channels,
        classes=num_classes,
        **backbone_kwargs,
    )
    level_channels = net.encoder.out_channels[_SMP_SKIPPED:]
    if not 0 <= aux_level < len(level_channels):
        raise ValueError(f"aux_level={aux_level} must be a level in 0..{len(level_channels) - 1}")
    if isinstance(net.encoder.model, NATBackbone):
        net.decoder.feature_norms = nn.ModuleList(nn.Identity() for _ in level_channels)
    aux_head = (
        FCNHead(level_channels[aux_level], num_classes, aux_channels, dropout) if aux else None
    )
    return UPerNet(
        net.encoder,
        net.decoder,
        num_classes,
        channels=channels,
        dropout=dropout,
        aux_head=aux_head,
        aux_level=aux_level,
        backbone=backbone,
    )


def build_model(config: SegmentConfig, num_classes: int, *, pretrained: bool = False) -> UPerNet:
    """The UPerNet ``config`` describes."""
    return upernet(
        config.backbone,
        num_classes,
        pretrained=pretrained,
        channels=config.channels,
        dropout=config.dropout,
        aux=config.aux_weight > 0,
        aux_channels=config.aux_channels,
        drop_path_rate=config.drop_path,
        **(config.backbone_args or {}),
    )


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """The decoder's BatchNorm layers synchronised across processes, as the paper trained
    (``SyncBatchNorm`` runs on GPUs only: on CPU each process keeps its own statistics)."""
    if device.type != "cuda":
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
