"""Fused neighborhood-attention kernels in Triton: forward, and backward for dq / d_rpb and dk / dv.

Every problem is seen as 3-D (a 1-D or 2-D one gets leading axes of length 1 and kernel 1). A
program owns a box of queries that share one dilation residue per axis (``T0 x T1 x T2`` in
dilation-group coordinates), computes each query's window start in closed form (the arithmetic
of :func:`nat.ops.spec.axis_window_start`), and streams the box's halo of keys in chunks of
``BLOCK_N`` with an online softmax; RPB entries are gathered per (query, key) pair, causal
masking and stride are index comparisons. Grouped-query attention is an index change: query
head ``h`` reads key/value head ``h // groups``.

Imported lazily by :mod:`nat.ops.triton`: ``TRITON_INTERPRET=1`` at import time builds the
kernels for Triton's interpreter (CPU tensors), which is how the test suite runs them.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton import knobs

INTERPRETED = bool(knobs.runtime.interpret)
"""Whether these kernels were built for Triton's interpreter (they then take CPU tensors)."""


@triton.jit
def _window_first(qi, glen, K: tl.constexpr, stride, CAUSAL: tl.constexpr):
    """Group index of the first key of query ``qi`` (``spec.axis_window_start``, per group)."""
    if CAUSAL:
        leader = tl.minimum((qi // stride) * stride + stride - 1, glen - 1)
        first = leader - K + 1
    else:
        left: tl.constexpr = K // 2
        right: tl.constexpr = K // 2 - 1 + K % 2
        leader = tl.minimum((qi // stride) * stride + stride // 2, glen - 1)
        centre = tl.minimum(tl.maximum(leader, left), glen - 1 - right)
        first = centre - left
    return first


@triton.jit
def _tile_axis(
    axis_id, length, stride, dilation, K: tl.constexpr, CAUSAL: tl.constexpr, T: tl.constexpr
):
    """One axis of a query tile: residue, group length, first query and the key halo."""
    residue = axis_id % dilation
    tile = axis_id // dilation
    glen = (length - residue + dilation - 1) // dilation
    q_first = tile * T
    q_last = tl.minimum(q_first + T - 1, glen - 1)
    lo = tl.maximum(_window_first(q_first, glen, K, stride, CAUSAL), 0)
    hi = _window_first(q_last, glen, K, stride, CAUSAL) + K
    return residue, glen, q_first, lo, tl.maximum(hi - lo, 0)


@triton.jit
def _pair_mask(qi, first, kj, K: tl.constexpr, CAUSAL: tl.constexpr):
    """``[M, N]``: key ``kj[n]`` is in query ``qi[m]``'s window (whose first key is ``first``)."""
    inside = (kj[None, :] >= first[:, None]) & (kj[None, :] < first[:, None] + K)
    if CAUSAL:
        inside = inside & (kj[None, :] <= qi[:, None])
    return inside


@triton.jit
def _box(m, B1, B2):
    """Index ``m`` of a row-major box ``[*, B1, B2]`` as its three coordinates."""
    return m // (B1 * B2), (m // B2) % B1, m % B2


@triton.jit
def _rpb_offset(qi0, qi1, qi2, kj0, kj1, kj2, K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr):
    """``[M, N]`` flat RPB index ``kj - qi + K - 1`` per axis, row-major over ``2K - 1``."""
    b0 = kj0[None, :] - qi0[:, None] + K0 - 1
    b1 = kj1[None, :] - qi1[:, None] + K1 - 1
    b2 = kj2[None, :] - qi2[:, None] + K2 - 1
    return (b0 * (2 * K1 - 1) + b1) * (2 * K2 - 1) + b2


@triton.jit
def na_forward_kernel(
    Q, Kt, V, RPB, O, LSE,
    sqb, sqn, sqh, skb, skn, skh, svb, svn, svh,
    L0, L1, L2, S0, S1, S2, D0, D1, D2, N1, N2,
    heads, groups, head_dim, head_dim_v, scale,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr,
    T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_RPB: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Output ``O`` ``[B, N, heads, Dv]`` and log-sum-exp ``LSE`` ``[B, heads, N]`` (float32)."""
    BLOCK_M: tl.constexpr = T0 * T1 * T2
    pid, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // heads, bh % heads
    hk = h // groups
    a0, a1, a2 = _box(pid, N1, N2)
    r0, glen0, f0, lo0, H0 = _tile_axis(a0, L0, S0, D0, K0, C0, T0)
    r1, glen1, f1, lo1, H1 = _tile_axis(a1, L1, S1, D1, K1, C1, T1)
    r2, glen2, f2, lo2, H2 = _tile_axis(a2, L2, S2, D2, K2, C2, T2)
    m0, m1, m2 = _box(tl.arange(0, BLOCK_M), T1, T2)
    qi0, qi1, qi2 = f0 + m0, f1 + m1, f2 + m2
    q_ok = (qi0 < glen0) & (qi1 < glen1) & (qi2 < glen2)
    q_row = ((qi0 * D0 + r0) * L1 + qi1 * D1 + r1) * L2 + qi2 * D2 + r2
    first0 = _window_first(qi0, glen0, K0, S0, C0)
    first1 = _window_first(qi1, glen1, K1, S1, C1)
    first2 = _window_first(qi2, glen2, K2, S2, C2)

    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    b64 = b.to(tl.int64)
    q = tl.load(
        Q + b64 * sqb + q_row[:, None] * sqn + h * sqh + d[None, :],
        mask=q_ok[:, None] & (d[None, :] < head_dim),
        other=0.0,
    )
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    total = H0 * H1 * H2
    for start in range(0, total, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n0, n1, n2 = _box(n, H1, H2)
        kj0, kj1, kj2 = lo0 + n0, lo1 + n1, lo2 + n2
        k_ok = n < total
        k_row = ((kj0 * D0 + r0) * L1 + kj1 * D1 + r1) * L2 + kj2 * D2 + r2
        k = tl.load(
            Kt + b64 * skb + k_row[:, None] * skn + hk * skh + d[None, :],
            mask=k_ok[:, None] & (d[None, :] < head_dim),
            other=0.0,
        )
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        valid = (
            _pair_mask(qi0, first0, kj0, K0, C0)
            & _pair_mask(qi1, first1, kj1, K1, C1)
            & _pair_mask(qi2, first2, kj2, K2, C2)
            & q_ok[:, None]
            & k_ok[None, :]
        )
        if HAS_RPB:
            bias_at = _rpb_offset(qi0, qi1, qi2, kj0, kj1, kj2, K0, K1, K2)
            r_len = (2 * K0 - 1) * (2 * K1 - 1) * (2 * K2 - 1)
            s += tl.load(RPB + h * r_len + bias_at, mask=valid, other=0.0).to(tl.float32)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            V + b64 * svb + k_row[:, None] * svn + hk * svh + dv[None, :],
            mask=k_ok[:, None] & (dv[None, :] < head_dim_v),
            other=0.0,
        )
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    n_total = L0 * L1 * L2
    tl.store(
        O + ((b64 * n_total + q_row[:, None]) * heads + h) * head_dim_v + dv[None, :],
        out.to(O.dtype.element_ty),
        mask=q_ok[:, None] & (dv[None, :] < head_dim_v),
    )
    tl.store(LSE + (b64 * heads + h) * n_total + q_row, m_i + tl.log(l_safe), mask=q_ok)


@triton.jit
def na_backward_dq_kernel(
    Q, Kt, V, RPB, DO, LSE, DELTA, DQ, DRPB,
    sqb, sqn, sqh, skb, skn, skh, svb, svn, svh,
    L0, L1, L2, S0, S1, S2, D0, D1, D2, N1, N2,
    heads, groups, head_dim, head_dim_v, scale,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr,
    T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_RPB: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """``DQ`` ``[B, heads, N, D]`` (float32) and, with RPB, ``DRPB`` ``[heads, R]`` (float32,
    accumulated atomically). ``DO`` is ``[B, N, heads, Dv]`` contiguous, ``LSE`` and ``DELTA``
    (``rowsum(dO * O) - dLSE``) ``[B, heads, N]``."""
    BLOCK_M: tl.constexpr = T0 * T1 * T2
    pid, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // heads, bh % heads
    hk = h // groups
    a0, a1, a2 = _box(pid, N1, N2)
    r0, glen0, f0, lo0, H0 = _tile_axis(a0, L0, S0, D0, K0, C0, T0)
    r1, glen1, f1, lo1, H1 = _tile_axis(a1, L1, S1, D1, K1, C1, T1)
    r2, glen2, f2, lo2, H2 = _tile_axis(a2, L2, S2, D2, K2, C2, T2)
    m0, m1, m2 = _box(tl.arange(0, BLOCK_M), T1, T2)
    qi0, qi1, qi2 = f0 + m0, f1 + m1, f2 + m2
    q_ok = (qi0 < glen0) & (qi1 < glen1) & (qi2 < glen2)
    q_row = ((qi0 * D0 + r0) * L1 + qi1 * D1 + r1) * L2 + qi2 * D2 + r2
    first0 = _window_first(qi0, glen0, K0, S0, C0)
    first1 = _window_first(qi1, glen1, K1, S1, C1)
    first2 = _window_first(qi2, glen2, K2, S2, C2)

    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    b64 = b.to(tl.int64)
    n_total = L0 * L1 * L2
    q = tl.load(
        Q + b64 * sqb + q_row[:, None] * sqn + h * sqh + d[None, :],
        mask=q_ok[:, None] & (d[None, :] < head_dim),
        other=0.0,
    )
    do = tl.load(
        DO + ((b64 * n_total + q_row[:, None]) * heads + h) * head_dim_v + dv[None, :],
        mask=q_ok[:, None] & (dv[None, :] < head_dim_v),
        other=0.0,
    )
    stat = (b64 * heads + h) * n_total + q_row
    lse = tl.load(LSE + stat, mask=q_ok, other=0.0)
    delta = tl.load(DELTA + stat, mask=q_ok, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    total = H0 * H1 * H2
    for start in range(0, total, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n0, n1, n2 = _box(n, H1, H2)
        kj0, kj1, kj2 = lo0 + n0, lo1 + n1, lo2 + n2
        k_ok = n < total
        k_row = ((kj0 * D0 + r0) * L1 + kj1 * D1 + r1) * L2 + kj2 * D2 + r2
        k = tl.load(
            Kt + b64 * skb + k_row[:, None] * skn + hk * skh + d[None, :],
            mask=k_ok[:, None] & (d[None, :] < head_dim),
            other=0.0,
        )
        v = tl.load(
            V + b64 * svb + k_row[:, None] * svn + hk * svh + dv[None, :],
            mask=k_ok[:, None] & (dv[None, :] < head_dim_v),
            other=0.0,
        )
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        valid = (
            _pair_mask(qi0, first0, kj0, K0, C0)
            & _pair_mask(qi1, first1, kj1, K1, C1)
            & _pair_mask(qi2, first2, kj2, K2, C2)
            & q_ok[:, None]
            & k_ok[None, :]
        )
        if HAS_RPB:
            bias_at = _rpb_offset(qi0, qi1, qi2, kj0, kj1, kj2, K0, K1, K2)
            r_len = (2 * K0 - 1) * (2 * K1 - 1) * (2 * K2 - 1)
            s += tl.load(RPB + h * r_len + bias_at, mask=valid, other=0.0).to(tl.float32)
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
        if HAS_RPB:
            tl.atomic_add(DRPB + h * r_len + bias_at, ds, mask=valid)
    tl.store(
        DQ + ((b64 * heads + h) * n_total + q_row[:, None]) * head_dim + d[None, :],
        dq * scale,
        mask=q_ok[:, None] & (d[None, :] < head_dim),
    )


@triton.jit
def na_backward_dkdv_kernel(
    Q, Kt, V, RPB, DO, LSE, DELTA, DK, DV,
    sqb, sqn, sqh, skb, skn, skh, svb, svn, svh,
    L0, L1, L2, S0, S1, S2, D0, D1, D2, N1, N2,
    heads, groups, head_dim, head_dim_v, scale, R0, R1, R2,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr,
    T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_RPB: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """``DK`` ``[B, heads_kv, N, D]`` and ``DV`` ``[B, heads_kv, N, Dv]`` (float32) for a box of
    keys, summed over the ``groups`` query heads that read them. The queries visited are those
    within ``R`` (``spec.inverse_window_radius``) group steps of the box on every axis."""
    BLOCK_N: tl.constexpr = T0 * T1 * T2
    pid, bh = tl.program_id(0), tl.program_id(1)
    heads_kv = heads // groups
    b, hk = bh // heads_kv, bh % heads_kv
    a0, a1, a2 = _box(pid, N1, N2)
    # The key box, its group lengths and the query halo around it.
    r0, r1, r2 = a0 % D0, a1 % D1, a2 % D2
    glen0 = (L0 - r0 + D0 - 1) // D0
    glen1 = (L1 - r1 + D1 - 1) // D1
    glen2 = (L2 - r2 + D2 - 1) // D2
    f0, f1, f2 = (a0 // D0) * T0, (a1 // D1) * T1, (a2 // D2) * T2
    lo0, lo1, lo2 = tl.maximum(f0 - R0, 0), tl.maximum(f1 - R1, 0), tl.maximum(f2 - R2, 0)
    H0 = tl.maximum(tl.minimum(f0 + T0 + R0, glen0) - lo0, 0)
    H1 = tl.maximum(tl.minimum(f1 + T1 + R1, glen1) - lo1, 0)
    H2 = tl.maximum(tl.minimum(f2 + T2 + R2, glen2) - lo2, 0)
    m0, m1, m2 = _box(tl.arange(0, BLOCK_N), T1, T2)
    kj0, kj1, kj2 = f0 + m0, f1 + m1, f2 + m2
    k_ok = (kj0 < glen0) & (kj1 < glen1) & (kj2 < glen2)
    k_row = ((kj0 * D0 + r0) * L1 + kj1 * D1 + r1) * L2 + kj2 * D2 + r2

    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    b64 = b.to(tl.int64)
    n_total = L0 * L1 * L2
    k = tl.load(
        Kt + b64 * skb + k_row[:, None] * skn + hk * skh + d[None, :],
        mask=k_ok[:, None] & (d[None, :] < head_dim),
        other=0.0,
    )
    v = tl.load(
        V + b64 * svb + k_row[:, None] * svn + hk * svh + dv[None, :],
        mask=k_ok[:, None] & (dv[None, :] < head_dim_v),
        other=0.0,
    )
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dvacc = tl.zeros((BLOCK_N, BLOCK_DV), tl.float32)
    total = H0 * H1 * H2
    for g in range(0, groups):
        h = hk * groups + g
        for start in range(0, total, BLOCK_M):
            n = start + tl.arange(0, BLOCK_M)
            n0, n1, n2 = _box(n, H1, H2)
            qi0, qi1, qi2 = lo0 + n0, lo1 + n1, lo2 + n2
            q_ok = n < total
            q_row = ((qi0 * D0 + r0) * L1 + qi1 * D1 + r1) * L2 + qi2 * D2 + r2
            q = tl.load(
                Q + b64 * sqb + q_row[:, None] * sqn + h * sqh + d[None, :],
                mask=q_ok[:, None] & (d[None, :] < head_dim),
                other=0.0,
            )
            do = tl.load(
                DO + ((b64 * n_total + q_row[:, None]) * heads + h) * head_dim_v + dv[None, :],
                mask=q_ok[:, None] & (dv[None, :] < head_dim_v),
                other=0.0,
            )
            stat = (b64 * heads + h) * n_total + q_row
            lse = tl.load(LSE + stat, mask=q_ok, other=0.0)
            delta = tl.load(DELTA + stat, mask=q_ok, other=0.0)
            first0 = _window_first(qi0, glen0, K0, S0, C0)
            first1 = _window_first(qi1, glen1, K1, S1, C1)
            first2 = _window_first(qi2, glen2, K2, S2, C2)
            # [queries, keys], as in the forward; transposed for the key-side products.
            valid = (
                _pair_mask(qi0, first0, kj0, K0, C0)
                & _pair_mask(qi1, first1, kj1, K1, C1)
                & _pair_mask(qi2, first2, kj2, K2, C2)
                & q_ok[:, None]
                & k_ok[None, :]
            )
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            if HAS_RPB:
                bias_at = _rpb_offset(qi0, qi1, qi2, kj0, kj1, kj2, K0, K1, K2)
                r_len = (2 * K0 - 1) * (2 * K1 - 1) * (2 * K2 - 1)
                s += tl.load(RPB + h * r_len + bias_at, mask=valid, other=0.0).to(tl.float32)
            p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
            dvacc += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    out = (b64 * heads_kv + hk) * n_total + k_row[:, None]
    tl.store(
        DK + out * head_dim + d[None, :], dk * scale, mask=k_ok[:, None] & (d[None, :] < head_dim)
    )
    tl.store(
        DV + out * head_dim_v + dv[None, :],
        dvacc,
        mask=k_ok[:, None] & (dv[None, :] < head_dim_v),
    )
