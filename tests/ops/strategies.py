"""Hypothesis strategies for neighborhood-attention problems (shapes and window arguments)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st


@dataclass
class Problem:
    spatial: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]
    batch: int
    heads: int
    head_dim: int
    head_dim_v: int
    use_rpb: bool
    heads_kv: int = 0
    """Key/value heads (grouped-query attention when fewer than ``heads``); 0 means ``heads``."""

    def __post_init__(self) -> None:
        self.heads_kv = self.heads_kv or self.heads

    @property
    def rpb_allowed(self) -> bool:
        return (
            all(k % 2 for k in self.kernel_size)
            and all(s == 1 for s in self.stride)
            and not any(self.is_causal)
        )

    def window_kwargs(self) -> dict:
        return dict(
            kernel_size=self.kernel_size,
            stride=self.stride,
            dilation=self.dilation,
            is_causal=self.is_causal,
        )

    def tensors(self, dtype=torch.float64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        shape = (self.batch, *self.spatial)
        q = torch.randn(*shape, self.heads, self.head_dim, generator=g, dtype=torch.float64)
        k = torch.randn(*shape, self.heads_kv, self.head_dim, generator=g, dtype=torch.float64)
        v = torch.randn(*shape, self.heads_kv, self.head_dim_v, generator=g, dtype=torch.float64)
        rpb = None
        if self.use_rpb:
            rpb = torch.randn(
                self.heads, *(2 * k - 1 for k in self.kernel_size), generator=g, dtype=torch.float64
            )
        cast = [t.to(dtype) for t in (q, k, v)]
        return (*cast, None if rpb is None else rpb.to(dtype))


@st.composite
def axis(draw, max_kernel: int = 5, max_dilation: int = 3, max_extra: int = 4, rpb: bool = False):
    """One axis: ``(length, kernel, stride, dilation, causal)``; with ``rpb``, one RPB allows."""
    if rpb:
        kernel = draw(st.sampled_from(range(3, max(3, max_kernel) + 1, 2)))
    else:
        kernel = draw(st.integers(2, max_kernel))
    dilation = draw(st.integers(1, max_dilation))
    stride = 1 if rpb else draw(st.integers(1, kernel))
    causal = False if rpb else draw(st.booleans())
    length = kernel * dilation + draw(st.integers(0, max_extra))
    return length, kernel, stride, dilation, causal


@st.composite
def problems(
    draw, ndim=None, allow_stride: bool = True, allow_causal: bool = True, rpb: bool = False
):
    """A random problem; with ``rpb``, always one with a relative positional bias."""
    ndim = draw(st.integers(1, 3)) if ndim is None else ndim
    limits = {1: (7, 3, 8), 2: (5, 2, 4), 3: (3, 2, 2)}[ndim]
    axes = [draw(axis(*limits, rpb=rpb)) for _ in range(ndim)]
    spatial, kernel, stride, dilation, causal = (tuple(a[i] for a in axes) for i in range(5))
    if not allow_stride:
        stride = (1,) * ndim
    if not allow_causal:
        causal = (False,) * ndim
    # Grouped-query attention: 1 or 2 key/value heads, each shared by 1 or 2 query heads.
    heads_kv, groups = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    problem = Problem(
        spatial=spatial,
        kernel_size=kernel,
        stride=stride,
        dilation=dilation,
        is_causal=causal,
        batch=draw(st.integers(1, 2)),
        heads=heads_kv * groups,
        head_dim=draw(st.integers(1, 4)),
        head_dim_v=draw(st.integers(1, 4)),
        use_rpb=False,
        heads_kv=heads_kv,
    )
    problem.use_rpb = rpb or (problem.rpb_allowed and draw(st.booleans()))
    return problem


@dataclass(frozen=True)
class Layout:
    """How a tensor's values sit in memory: same values, different strides.

    ``expand`` axes are broadcast from size 1 (stride 0), the other axes are stored in the order
    ``order`` (``order[0]`` outermost: a permutation such as channels-last), every ``step``-th
    element of a ``step``-times larger buffer, starting ``offset`` elements in.
    """

    expand: tuple[bool, ...]
    order: tuple[int, ...]
    step: tuple[int, ...]
    offset: int

    def place(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` in this layout (along ``expand`` axes, all entries take the first one's)."""
        base = values[tuple(slice(0, 1) if e else slice(None) for e in self.expand)]
        buffer_shape = [base.shape[a] * self.step[a] + self.offset for a in self.order]
        buffer = torch.zeros(buffer_shape, dtype=values.dtype)
        stored = buffer[tuple(slice(self.offset, None, self.step[a]) for a in self.order)]
        stored = stored.permute([self.order.index(a) for a in range(values.dim())])
        stored.copy_(base)
        return stored.expand(values.shape)


@st.composite
def layouts(draw, rank: int) -> Layout:
    return Layout(
        expand=tuple(draw(st.lists(st.booleans(), min_size=rank, max_size=rank))),
        order=tuple(draw(st.permutations(range(rank)))),
        step=tuple(draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank))),
        offset=draw(st.integers(0, 1)),
    )
