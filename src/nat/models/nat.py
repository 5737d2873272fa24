"""NAT and DiNAT: Neighborhood Attention Transformers, as classifiers and as dense backbones.

Reads top to bottom: building blocks (tokenizer, block, level) -> :class:`NATTrunk` (the stem
and levels, with timm's ``forward_intermediates``) -> :class:`NAT` (classification) and
:class:`NATBackbone` (detection/segmentation), both built on it -> checkpoint filter -> pretrained
configs -> registered variants. The state dicts match the published checkpoints key for key (see
``docs/nat-models.md``). Everything after the tokenizer is channels-last ``[B, h, w, C]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from http.client import HTTPException
from typing import Any
from urllib.error import URLError

import torch
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import (
    FeatureInfo,
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
    register_notrace_module,
)
from timm.models._features import feature_take_indices
from torch import nn

from ..nn import LayerNorm, Linear, NeighborhoodAttention2D, use_nat_linear

__all__ = ["NAT", "NATBackbone", "NATBlock", "NATLevel", "NATTrunk", "checkpoint_filter_fn"]

# The attention module checks its input's shape (and pads small inputs) in Python: torch.fx keeps
# it as one leaf call, as timm does for its own shape-dependent modules. So is the linear, which
# chooses its product (oneDNN or the BLAS) on the real tensors, as torch.fx keeps nn.Linear.
register_notrace_module(NeighborhoodAttention2D)
register_notrace_module(Linear)


_REDUCED = (torch.bfloat16, torch.float16)


def _reduced_precision_cpu(x: torch.Tensor) -> torch.dtype | None:
    """The bf16/fp16 type a convolution of ``x`` runs in on the CPU (its own, or autocast's).

    ``None`` otherwise, and under torch.fx tracing (a Proxy has no device or dtype to branch on).
    """
    if isinstance(x, torch.fx.Proxy) or x.device.type != "cpu":
        return None
    if x.dtype in _REDUCED:
        return x.dtype
    dtype = torch.get_autocast_dtype("cpu")
    return dtype if torch.is_autocast_enabled("cpu") and dtype in _REDUCED else None


def _norm_layer(norm_layer: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    """``nn.LayerNorm`` (the default) as :class:`nat.nn.LayerNorm`: the same module and keys,
    its CPU bfloat16 calls (all of them under CPU autocast) in one pass of the C++ kernel."""
    return LayerNorm if norm_layer is nn.LayerNorm else norm_layer


class _Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (its parameters, keys and hooks) whose reduced-precision CPU calls cast the
    weight straight into channels-last.

    oneDNN runs a convolution of channels-last input with a channels-last weight: fed autocast's
    contiguous bf16 copy, it copied that into channels-last again, forward and backward. One copy
    now casts and changes the layout, as ``.to(dtype, memory_format=...)`` does; the results are
    the same to the bit (``tests/models/test_architecture.py``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _reduced_precision_cpu(x)
        if dtype is None:
            return super().forward(x)
        weight = self.weight.to(dtype, memory_format=torch.channels_last)
        return self._conv_forward(x, weight, None if self.bias is None else self.bias.to(dtype))


class ConvTokenizer(nn.Module):
    """Two 3x3 stride-2 convs and a LayerNorm: ``[B, C_in, H, W]`` -> ``[B, H/4, W/4, C]``."""

    def __init__(self, in_chans: int, embed_dim: int, norm_layer: type[nn.Module]) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            _Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            _Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = _norm_layer(norm_layer)(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            # A traced graph cannot branch on the device: it records the layout change (a copy,
            # the same results on any device), so that it computes what eager CPU calls do.
            x = x.contiguous(memory_format=torch.channels_last)
        elif x.device.type == "cpu":
            # oneDNN's CPU convolutions run faster on channels-last input: bf16/fp16 ones about
            # twice as fast, with the same results; float32 ones, NAT-Tiny's tokenizer at batch 8
            # on a Zen 3 EPYC, 56 -> 37 ms for a training step and 29 -> 12 ms for inference,
            # with outputs equal to rounding (another algorithm; docs/benchmarks.md, round
            # fourteen). The output's permute is then already contiguous for the LayerNorm. One
            # copy casts (as autocast would, for a reduced-precision convolution) and changes the
            # layout.
            x = x.to(dtype=_reduced_precision_cpu(x) or x.dtype, memory_format=torch.channels_last)
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """A 3x3 stride-2 convolution doubling channels: ``[B, h, w, C]`` -> ``[B, h/2, w/2, 2C]``."""

    def __init__(self, dim: int, norm_layer: type[nn.Module]) -> None:
        super().__init__()
        self.reduction = _Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = _norm_layer(norm_layer)(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.norm(x)


class NATBlock(nn.Module):
    """Pre-norm transformer block with (dilated) neighborhood attention: ``[B, h, w, C]``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int = 7,
        dilation: int = 1,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        norm_layer = _norm_layer(norm_layer)
        self.norm1 = norm_layer(dim)
        self.attn = NeighborhoodAttention2D(
            dim,
            num_heads,
            kernel_size,
            dilation=dilation,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=drop,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        # timm's Mlp (its keys), with the linears of the attention (nat.nn.Linear).
        self.mlp = use_nat_linear(Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop))
        self.layer_scale = layer_scale
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.gamma1 = self.gamma2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The residual stream is added and normalised as [B, h*w, C] rows: views, the same
        # arithmetic. Under torch.compile on the CPU, Inductor gives every 4D intermediate that
        # flows into a convolution (the next downsampler) a channels-last layout, reading
        # [B, h, w, C]'s height as channels. The height would then be innermost, and every
        # residual and LayerNorm kernel of the level would read it through strided gathers.
        if not isinstance(x, torch.fx.Proxy):
            self.attn.check_input(x)  # before the flatten, which would hide a wrong shape
        shape = x.shape
        x = x.flatten(1, 2)
        attn = self.attn(self.norm1(x).view(shape)).flatten(1, 2)
        x = x + self.drop_path(attn if self.gamma1 is None else self.gamma1 * attn)
        mlp = self.mlp(self.norm2(x))
        return (x + self.drop_path(mlp if self.gamma2 is None else self.gamma2 * mlp)).view(shape)


class NATLevel(nn.Module):
    """``blocks`` at one resolution, then an optional ``downsample`` (every level but the last)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        kernel_size: int,
        dilations: Sequence[int],
        downsample: bool,
        drop_path: Sequence[float],
        norm_layer: type[nn.Module],
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            NATBlock(
                dim,
                num_heads,
                kernel_size,
                dilation=dilations[j],
                drop_path=drop_path[j],
                norm_layer=norm_layer,
                **block_kwargs,
            )
            for j in range(depth)
        )
        self.downsample = ConvDownsampler(dim, norm_layer) if downsample else None

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The level's features before downsampling: ``[B, h, w, C]``."""
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        return x if self.downsample is None else self.downsample(x)


def _check_architecture(
    embed_dim: int,
    depths: Sequence[int],
    num_heads: Sequence[int],
    kernel_size: int | Sequence[int],
    dilations: Sequence[Sequence[int]] | None,
) -> tuple[list[int], list[list[int]]]:
    """Validate the per-level arguments; returns ``kernel_size`` and ``dilations`` per level."""
    levels = len(depths)
    if levels < 1 or any(not isinstance(d, int) or d < 1 for d in depths):
        raise ValueError(f"depths={list(depths)} must be a non-empty list of positive integers")
    if len(num_heads) != levels:
        raise ValueError(
            f"num_heads={list(num_heads)} must have one entry per level (len(depths)={levels})"
        )
    for i, heads in enumerate(num_heads):
        dim = embed_dim * 2**i
        if heads < 1 or dim % heads:
            raise ValueError(
                f"num_heads[{i}]={heads} must divide level {i}'s dim={dim} (embed_dim * 2**{i})"
            )
    kernels = [kernel_size] * levels if isinstance(kernel_size, int) else list(kernel_size)
    if len(kernels) != levels or any(
        not isinstance(k, int) or k < 1 or k % 2 == 0 for k in kernels
    ):
        raise ValueError(
            f"kernel_size={kernel_size!r} must be an odd positive integer, or one per level "
            f"(len(depths)={levels})"
        )
    if dilations is None:
        return kernels, [[1] * d for d in depths]
    dilations = [list(level) for level in dilations]
    if len(dilations) != levels or any(
        len(level) != d for level, d in zip(dilations, depths, strict=True)
    ):
        raise ValueError(
            f"dilations={dilations} must have one list per level with one dilation per layer "
            f"(depths={list(depths)})"
        )
    if any(not isinstance(v, int) or v < 1 for level in dilations for v in level):
        raise ValueError(f"dilations={dilations} must hold positive integers")
    return kernels, dilations


def _build_levels(
    embed_dim: int,
    depths: Sequence[int],
    num_heads: Sequence[int],
    kernels: Sequence[int],
    dilations: Sequence[Sequence[int]],
    drop_path_rate: float,
    norm_layer: type[nn.Module],
    **block_kwargs: Any,
) -> nn.ModuleList:
    total = sum(depths)
    rates = [drop_path_rate * j / max(total - 1, 1) for j in range(total)]
    levels = nn.ModuleList()
    for i, depth in enumerate(depths):
        first = sum(depths[:i])
        levels.append(
            NATLevel(
                embed_dim * 2**i,
                depth,
                num_heads[i],
                kernels[i],
                dilations[i],
                downsample=i < len(depths) - 1,
                drop_path=rates[first : first + depth],
                norm_layer=norm_layer,
                **block_kwargs,
            )
        )
    return levels


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _feature_info(embed_dim: int, depths: Sequence[int]) -> list[dict[str, Any]]:
    """timm's per-level feature description; ``module`` is the last block, before downsampling."""
    return [
        dict(num_chs=embed_dim * 2**i, reduction=2 ** (i + 2), module=f"levels.{i}.blocks.{d - 1}")
        for i, d in enumerate(depths)
    ]


def _check_global_pool(global_pool: str) -> None:
    if global_pool not in ("avg", ""):
        raise ValueError(f"global_pool={global_pool!r} must be 'avg' or '' (no pooling)")


def _check_output_fmt(output_fmt: str) -> None:
    if output_fmt not in ("NCHW", "NHWC"):
        raise ValueError(f"output_fmt={output_fmt!r} must be 'NCHW' or 'NHWC'")


class NATTrunk(nn.Module):
    """The stem and levels that :class:`NAT` and :class:`NATBackbone` are built on.

    Owns the architecture arguments, weight decay exemptions, gradient checkpointing, checkpoint
    loading and :meth:`forward_intermediates`; subclasses add their normalisation and heads and
    say how an intermediate is normalised (:meth:`_norm_intermediate`) and how the last level's
    output is finished (:meth:`_norm_final`).
    """

    def __init__(
        self,
        embed_dim: int,
        mlp_ratio: float,
        depths: Sequence[int],
        num_heads: Sequence[int],
        drop_path_rate: float = 0.2,
        in_chans: int = 3,
        kernel_size: int | Sequence[int] = 7,
        dilations: Sequence[Sequence[int]] | None = None,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        kernels, dilations = _check_architecture(
            embed_dim, depths, num_heads, kernel_size, dilations
        )
        self.embed_dim = embed_dim
        self.num_levels = len(depths)
        self.kernel_size = kernels
        self.dilations = dilations
        self.norm_layer = norm_layer
        self.grad_checkpointing = False
        self.patch_embed = ConvTokenizer(in_chans, embed_dim, norm_layer)
        self.pos_drop = nn.Dropout(drop_rate)
        self.levels = _build_levels(
            embed_dim, depths, num_heads, kernels, dilations, drop_path_rate, norm_layer,
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
            attn_drop=attn_drop_rate, layer_scale=layer_scale,
        )  # fmt: skip

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The relative positional bias tables (biases and norms are excluded by timm as 1-D)."""
        return {name for name, _ in self.named_parameters() if name.endswith(".rpb")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^levels\.(\d+)"
            if coarse
            else [
                (r"^levels\.(\d+)\.blocks\.(\d+)", None),
                (r"^levels\.(\d+)\.downsample", (99998,)),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for level in self.levels:
            level.grad_checkpointing = enable

    def load_pretrained(self, checkpoint: str) -> None:
        """timm's ``custom_load`` hook: load a checkpoint file or directory in any format."""
        from .pretrained import load_pretrained

        load_pretrained(self, checkpoint)

    def _norm_intermediate(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Level ``index``'s features ``[B, h, w, C]`` as ``forward_intermediates(norm=True)``
        returns them."""
        raise NotImplementedError

    def _norm_final(self, x: torch.Tensor) -> torch.Tensor:
        """The last level's features ``[B, h, w, C]`` as ``forward_intermediates`` returns them."""
        raise NotImplementedError

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediate features: each taken level's features before its downsample.

        ``[B, in_chans, H, W]`` -> ``[B, embed_dim * 2**i, ceil(H / 2**(i+2)), ceil(W / ..)]`` for
        each level ``i`` of ``indices`` (``None``: all, an int ``n``: the last ``n``, negative
        indices count from the end), in ``output_fmt`` (``"NHWC"``: channels last); ``norm``
        normalises them as the subclass does. Unless ``intermediates_only``, also returns the
        final features (those of :meth:`forward_features` when every level ran); ``stop_early``
        skips the levels after the last one taken.
        """
        _check_output_fmt(output_fmt)
        take, last = feature_take_indices(len(self.levels), indices)
        x = self.pos_drop(self.patch_embed(x))
        stop = last if stop_early or intermediates_only else len(self.levels) - 1
        intermediates = []
        for i, level in enumerate(self.levels):
            x = level.forward_blocks(x)
            if i in take:
                out = self._norm_intermediate(i, x) if norm else x
                intermediates.append(
                    out.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else out
                )
            if i == stop:
                break
            if level.downsample is not None:
                x = level.downsample(x)
        if intermediates_only:
            return intermediates
        if stop == len(self.levels) - 1:
            x = self._norm_final(x)
        return x, intermediates


class NAT(NATTrunk):
    """NAT (and DiNAT, with ``dilations``) image classifier.

    ``[B, in_chans, H, W]`` -> logits ``[B, num_classes]``, for any ``H, W``. The keywords are the
    reference implementation's; ``dilations`` is a list per level of a list per layer (``None``:
    all 1, i.e. NAT). ``kernel_size`` may also be given per level. ``global_pool`` is ``"avg"`` or
    ``""`` (no pooling: :meth:`forward_head` returns per-token logits). :meth:`forward_features`
    is channels-last (``output_fmt = "NHWC"``).
    """

    output_fmt = "NHWC"

    def __init__(
        self,
        embed_dim: int,
        mlp_ratio: float,
        depths: Sequence[int],
        num_heads: Sequence[int],
        drop_path_rate: float = 0.2,
        in_chans: int = 3,
        kernel_size: int | Sequence[int] = 7,
        dilations: Sequence[Sequence[int]] | None = None,
        num_classes: int = 1000,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        layer_scale: float | None = None,
        global_pool: str = "avg",
    ) -> None:
        _check_global_pool(global_pool)
        super().__init__(
            embed_dim, mlp_ratio, depths, num_heads, drop_path_rate, in_chans, kernel_size,
            dilations, qkv_bias, qk_scale, drop_rate, attn_drop_rate, norm_layer, layer_scale,
        )  # fmt: skip
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dim * 2 ** (self.num_levels - 1)
        self.norm = _norm_layer(norm_layer)(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = _feature_info(embed_dim, depths)
        self.apply(_init_weights)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` (0: no head)."""
        if global_pool is not None:
            _check_global_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_weights)

    def _norm_intermediate(self, index: int, x: torch.Tensor) -> torch.Tensor:
        # The final norm is sized for the last level only; earlier levels are returned as they are.
        return self.norm(x) if index == self.num_levels - 1 else x

    def _norm_final(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop what ``forward_intermediates(indices)`` does not need; returns the kept indices.

        Levels after the last taken one go (with that level's downsample); the final norm goes
        with ``prune_norm`` or when the last level goes; the head with ``prune_head`` or then too.
        """
        take, last = feature_take_indices(len(self.levels), indices)
        prune_end = last < len(self.levels) - 1
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.levels = self.levels[: last + 1]
            self.levels[last].downsample = None
            self.num_levels = last + 1
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> normalised last-level tokens ``[B, H/2**(L+1), W/.., C]``."""
        x = self.pos_drop(self.patch_embed(x))
        for level in self.levels:
            x = level(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B, h, w, C]`` -> ``[B, num_classes]`` (``[B, C]`` with ``pre_logits``)."""
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class NATBackbone(NATTrunk):
    """NAT/DiNAT as a detection/segmentation backbone (the mmdetection/mmsegmentation layout).

    ``[B, in_chans, H, W]`` -> a list with, for each ``i`` in ``out_indices``, the level-``i``
    features before downsampling, normalised by ``norm{i}`` (built by ``norm_layer``, like every
    other norm), channels-first
    ``[B, embed_dim * 2**i, ceil(H / 2**(i+2)), ceil(W / 2**(i+2))]``: the trunk's
    ``forward_intermediates(out_indices, norm=True, intermediates_only=True)``.

    ``feature_info`` (timm's ``FeatureInfo``: ``.channels()``, ``.reduction()``), ``out_channels``
    and ``strides`` describe the outputs, for FPN/UPerNet necks. ``frozen_stages``: -1 freezes
    nothing, 0 the stem (``patch_embed``), ``k >= 1`` the stem and levels ``0..k-1``; frozen parts
    stay in eval mode and have ``requires_grad=False``.
    """

    output_fmt = "NCHW"

    def __init__(
        self,
        embed_dim: int,
        mlp_ratio: float,
        depths: Sequence[int],
        num_heads: Sequence[int],
        drop_path_rate: float = 0.2,
        in_chans: int = 3,
        kernel_size: int | Sequence[int] = 7,
        dilations: Sequence[Sequence[int]] | None = None,
        out_indices: Sequence[int] | None = None,
        frozen_stages: int = -1,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        layer_scale: float | None = None,
    ) -> None:
        super().__init__(
            embed_dim, mlp_ratio, depths, num_heads, drop_path_rate, in_chans, kernel_size,
            dilations, qkv_bias, qk_scale, drop_rate, attn_drop_rate, norm_layer, layer_scale,
        )  # fmt: skip
        self.select_outputs(out_indices)
        self.apply(_init_weights)
        self.frozen_stages = _check_frozen_stages(frozen_stages, len(depths))
        self._freeze()

    def select_outputs(self, out_indices: Sequence[int] | None) -> NATBackbone:
        """Keep only the outputs (and ``norm{i}`` layers) of ``out_indices`` (``None``: all
        levels); new ``norm{i}`` layers come from ``norm_layer``. Returns ``self``."""
        levels = len(self.levels)
        out_indices = tuple(range(levels)) if out_indices is None else tuple(out_indices)
        if not out_indices or any(
            not isinstance(i, int) or not -levels <= i < levels for i in out_indices
        ):
            raise ValueError(
                f"out_indices={out_indices} must be non-empty level indices in [0, {levels}) "
                f"(negative ones count from the end)"
            )
        out_indices = tuple(sorted({i % levels for i in out_indices}))
        self.out_indices = out_indices
        depths = [len(level.blocks) for level in self.levels]
        self.feature_info = FeatureInfo(_feature_info(self.embed_dim, depths), out_indices)
        self.out_channels = self.feature_info.channels()
        self.strides = self.feature_info.reduction()
        for i in range(levels):
            name = f"norm{i}"
            if i not in out_indices and hasattr(self, name):
                delattr(self, name)
            elif i in out_indices and not hasattr(self, name):
                self.add_module(name, _norm_layer(self.norm_layer)(self.embed_dim * 2**i))
        return self

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.patch_embed, *self.levels[: self.frozen_stages]]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> NATBackbone:
        super().train(mode)
        self._freeze()
        return self

    def _norm_intermediate(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if index not in self.out_indices:
            raise ValueError(
                f"level {index} has no norm{index}: norm=True takes only out_indices="
                f"{self.out_indices}"
            )
        return getattr(self, f"norm{index}")(x)

    def _norm_final(self, x: torch.Tensor) -> torch.Tensor:
        return x  # the backbone has no final norm: its outputs are the norm{i} of each level

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_intermediates(
            x, self.out_indices, norm=True, output_fmt="NCHW", intermediates_only=True
        )


def _check_frozen_stages(frozen_stages: int, levels: int) -> int:
    if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= levels:
        raise ValueError(
            f"frozen_stages={frozen_stages!r} must be -1 (nothing), 0 (the stem) or a number of "
            f"levels up to {levels}"
        )
    return frozen_stages


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's filter: any supported layout -> the original one, adapted to ``model``."""
    from .pretrained import fit_state_dict

    return fit_state_dict(model, state_dict)


def _select_features(model: NATBackbone, out_indices: Sequence[int], **_: Any) -> NATBackbone:
    return model.select_outputs(out_indices)


_FEATURE_CLASSES = (None, "getter")
"""``feature_cls`` values of ``features_only=True``: the mm* backbone (default), timm's getter."""


def _create_nat(variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """timm's builder. ``features_only=True`` builds a :class:`NATBackbone` (mm* layout), or
    with ``feature_cls="getter"`` timm's ``FeatureGetterNet`` around a pruned :class:`NAT`."""
    features_only = kwargs.get("features_only", False)
    feature_cls = kwargs.pop("feature_cls", None)
    if feature_cls not in _FEATURE_CLASSES:
        raise ValueError(
            f"feature_cls={feature_cls!r} is not supported: leave it out for the NATBackbone "
            f"(the levels' normalised maps) or pass 'getter' (timm's forward_intermediates)"
        )
    if feature_cls is not None and not features_only:
        raise ValueError(f"feature_cls={feature_cls!r} needs features_only=True")
    backbone = features_only and feature_cls is None
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if overlay.get("file"):
        # timm would read local files itself; ours also reads directories and names every mismatch.
        kwargs["pretrained_cfg_overlay"] = {"custom_load": True, **overlay}
    levels = tuple(range(len(kwargs["depths"])))
    feature_cfg = dict(
        feature_cls=_select_features if backbone else feature_cls, out_indices=levels
    )
    try:
        return build_model_with_cfg(
            NATBackbone if backbone else NAT,
            variant,
            pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=feature_cfg,
            kwargs_filter=("num_classes", "global_pool") if backbone else None,
            **kwargs,
        )
    except (URLError, HTTPException, ConnectionError, TimeoutError) as err:
        from .pretrained import PretrainedDownloadError

        raise PretrainedDownloadError.for_variant(variant, kwargs, err) from None


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj.0",
        "classifier": "head",
        "license": "mit",
        # Our loader reads every supported format (and hub directories) with weights_only=True.
        "custom_load": True,
        **kwargs,
    }


_NAT_URL = "https://shi-labs.com/projects/nat/checkpoints/CLS/{}.pth"
_DINAT_URL = "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/{}.pth"

default_cfgs = generate_default_cfgs(
    {
        "nat_mini.in1k": _cfg(_NAT_URL.format("nat_mini")),
        "nat_tiny.in1k": _cfg(_NAT_URL.format("nat_tiny")),
        "nat_small.in1k": _cfg(_NAT_URL.format("nat_small")),
        "nat_base.in1k": _cfg(_NAT_URL.format("nat_base")),
        "dinat_mini.in1k": _cfg(_DINAT_URL.format("dinat_mini_in1k_224")),
        "dinat_tiny.in1k": _cfg(_DINAT_URL.format("dinat_tiny_in1k_224")),
        "dinat_small.in1k": _cfg(_DINAT_URL.format("dinat_small_in1k_224")),
        "dinat_base.in1k": _cfg(_DINAT_URL.format("dinat_base_in1k_224")),
        "dinat_large.in22k_ft_in1k": _cfg(_DINAT_URL.format("dinat_large_in22k_in1k_224")),
        "dinat_large_384.in22k_ft_in1k": _cfg(
            _DINAT_URL.format("dinat_large_in22k_in1k_384"),
            input_size=(3, 384, 384),
            pool_size=(12, 12),
        ),
        "nat_digits": {
            "url": "",
            "num_classes": 10,
            "input_size": (3, 32, 32),
            "pool_size": (2, 2),
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "first_conv": "patch_embed.proj.0",
            "classifier": "head",
            "custom_load": True,
        },
    }
)


def _dinat_dilations(
    arch: dict[str, Any], resolution: int, kernel_size: int = 7
) -> list[list[int]]:
    """DiNAT's schedule: layers alternate dilation 1 and the largest ``d`` with ``k * d`` fitting
    the level's feature map (``resolution / 2**(i+2)``), so DiNA spans the whole map."""
    out = []
    for i, depth in enumerate(arch["depths"]):
        sparse = max(1, resolution // 2 ** (i + 2) // kernel_size)
        out.append([1 if j % 2 == 0 else sparse for j in range(depth)])
    return out


_NAT_MINI = dict(depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3)
_NAT_TINY = dict(depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3)
_NAT_SMALL = dict(depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=2)
_NAT_BASE = dict(depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=2)
_DINAT_LARGE = dict(depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2)


def _variant(variant: str, pretrained: bool, args: dict[str, Any], kwargs: dict[str, Any]) -> NAT:
    return _create_nat(variant, pretrained, **{**args, **kwargs})


@register_model
def nat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Mini: 20.0M params, 2.7 GMACs, 81.8% ImageNet top-1."""
    return _variant("nat_mini", pretrained, dict(_NAT_MINI, drop_path_rate=0.2), kwargs)


@register_model
def nat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Tiny: 27.9M params, 4.3 GMACs, 83.2% ImageNet top-1."""
    return _variant("nat_tiny", pretrained, dict(_NAT_TINY, drop_path_rate=0.2), kwargs)


@register_model
def nat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Small: 50.7M params, 7.8 GMACs, 83.7% ImageNet top-1."""
    args = dict(_NAT_SMALL, drop_path_rate=0.3, layer_scale=1e-5)
    return _variant("nat_small", pretrained, args, kwargs)


@register_model
def nat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Base: 89.8M params, 13.7 GMACs, 84.3% ImageNet top-1."""
    args = dict(_NAT_BASE, drop_path_rate=0.5, layer_scale=1e-5)
    return _variant("nat_base", pretrained, args, kwargs)


@register_model
def dinat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Mini: NAT-Mini with dilated layers."""
    args = dict(_NAT_MINI, drop_path_rate=0.2, dilations=_dinat_dilations(_NAT_MINI, 224))
    return _variant("dinat_mini", pretrained, args, kwargs)


@register_model
def dinat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Tiny: NAT-Tiny with dilated layers."""
    args = dict(_NAT_TINY, drop_path_rate=0.2, dilations=_dinat_dilations(_NAT_TINY, 224))
    return _variant("dinat_tiny", pretrained, args, kwargs)


@register_model
def dinat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Small: NAT-Small with dilated layers and without layer scale."""
    args = dict(_NAT_SMALL, drop_path_rate=0.3, dilations=_dinat_dilations(_NAT_SMALL, 224))
    return _variant("dinat_small", pretrained, args, kwargs)


@register_model
def dinat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Base: NAT-Base with dilated layers."""
    dilations = _dinat_dilations(_NAT_BASE, 224)
    args = dict(_NAT_BASE, drop_path_rate=0.5, layer_scale=1e-5, dilations=dilations)
    return _variant("dinat_base", pretrained, args, kwargs)


@register_model
def dinat_large(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Large (ImageNet-22k pre-trained, 1k fine-tuned) at 224."""
    args = dict(_DINAT_LARGE, drop_path_rate=0.35, dilations=_dinat_dilations(_DINAT_LARGE, 224))
    return _variant("dinat_large", pretrained, args, kwargs)


@register_model
def dinat_large_384(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Large at 384: dilations grown to the 384 feature maps (13, 6, 3, 1)."""
    args = dict(_DINAT_LARGE, drop_path_rate=0.35, dilations=_dinat_dilations(_DINAT_LARGE, 384))
    return _variant("dinat_large_384", pretrained, args, kwargs)


@register_model
def nat_digits(pretrained: bool = False, **kwargs: Any) -> NAT:
    """A small NAT for scikit-learn's 8x8 digits upscaled to 32x32 (the training default)."""
    args = dict(
        embed_dim=32,
        depths=(2, 2, 2),
        num_heads=(2, 4, 8),
        kernel_size=3,
        mlp_ratio=2,
        drop_path_rate=0.1,
        num_classes=10,
    )
    return _variant("nat_digits", pretrained, args, kwargs)
