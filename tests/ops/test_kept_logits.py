"""The CPU kernel's forward keeps each window's logits for the backward (``keep_logits``).

The backward then reads them instead of computing the dot products again. Where the kernel has
8-lane vectors (AVX2) the backward computed them in the forward's summation order, so every
gradient must be the same to the bit as with the recomputing backward; with AVX-512 its float32
(and, without AVX512-BF16, bf16/fp16) recomputation summed in another order, so there they agree
to rounding.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import nat
from nat.ops import cpu, dispatch
from nat.ops.spec import NAParams, neighbor_table

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="the CPU kernel is not built")
TOLERANCE = {torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}

# (spatial, kernel, dilation, causal)
WINDOWS = [
    ((9, 11), (3, 5), (1, 2), (False, False)),
    ((7, 8), (3, 3), (1, 1), (True, False)),
    ((7, 7), (7, 7), (1, 1), (False, False)),
    ((20,), (7,), (2,), (False,)),
    ((4, 5, 6), (3, 3, 3), (1, 1, 1), (False, True, False)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kept_logits_give_the_recomputed_gradients_bit_for_bit(dtype):
    module = cpu.module_for(dtype)
    g = torch.Generator().manual_seed(0)
    lanes = cpu.lanes_for(dtype)
    for (
        spatial,
        kernel,
        dilation,
        causal,
    ), head_dim, heads_kv, rpb_on, packed in itertools.product(
        WINDOWS, [16, 32, 64], [2, 1], [True, False], [False, True]
    ):
        if packed and heads_kv != 2:
            continue
        params = NAParams(kernel, (1,) * len(kernel), dilation, causal, head_dim**-0.5)
        nbr, valid, bidx = neighbor_table(spatial, params, torch.device("cpu"))
        n, slots = nbr.shape
        q = torch.randn(2, n, 2, head_dim, generator=g).to(dtype)
        k, v = (torch.randn(2, n, heads_kv, head_dim, generator=g).to(dtype) for _ in "kv")
        table = 1
        for size in kernel:
            table *= 2 * size - 1
        rpb = torch.randn(2, table, generator=g).to(dtype) if rpb_on else None
        tables = (nbr, bidx, valid)
        out, lse, none = module.na_forward(q, k, v, rpb, *tables, params.scale)
        out2, lse2, logits = module.na_forward(q, k, v, rpb, *tables, params.scale, True)
        assert none.numel() == 0
        assert logits.shape == (2, 2, n, -(-slots // lanes) * lanes)
        assert torch.equal(out, out2) and torch.equal(lse, lse2)
        grad = torch.randn(out.shape, generator=g).to(dtype)
        dlse = torch.randn(lse.shape, generator=g)
        for grad_lse in (None, dlse):
            args = (grad, q, k, v, rpb, out, lse, *tables, grad_lse, params.scale)
            if packed:
                want, got = (torch.empty(2, n, 3, 2, head_dim, dtype=dtype) for _ in "wg")
                want_rpb = module.na_backward(*args, want)[3]
                got_rpb = module.na_backward(*args, got, logits)[3]
                pairs = [(want, got), (want_rpb, got_rpb)]
            else:
                recomputed = module.na_backward(*args)
                pairs = zip(recomputed, module.na_backward(*args, None, logits), strict=True)
            for w, o in pairs:
                case = (spatial, kernel, head_dim, heads_kv, rpb_on, packed)
                if lanes == 8:
                    assert torch.equal(w, o), case
                else:
                    scale = w.float().abs().amax().clamp_min(1) if w.numel() else 1.0
                    tol = TOLERANCE[dtype]
                    torch.testing.assert_close(
                        o.float() / scale, w.float() / scale, rtol=tol, atol=tol, msg=str(case)
                    )


def test_forward_for_autograd_keeps_logits_only_where_they_are_small():
    params = NAParams((7, 7), (1, 1), (1, 1), (False, False), 32**-0.5)
    q = torch.randn(2, 14, 14, 2, 32)
    lanes = cpu.vector_lanes()
    *_, logits = cpu.na_forward_saving(q, q, q, None, params)
    assert logits.shape == cpu.saved_shape(q, q, params) == (2, 2, 196, -(-49 // lanes) * lanes)
    # 13 x 13 = 169 slots is more than q, k, v and the output take at head_dim 32 (128 floats)
    wide = NAParams((13, 13), (1, 1), (1, 1), (False, False), 32**-0.5)
    *_, logits = cpu.na_forward_saving(q, q, q, None, wide)
    assert logits.numel() == 0 and cpu.saved_shape(q, q, wide) == (0,)
    # float64 and head_dim 8 run the scalar loops, which keep nothing
    for other in (q.double(), q[..., :8]):
        assert cpu.na_forward_saving(other, other, other, None, params)[2].numel() == 0
        assert cpu.saved_shape(other, other, params) == (0,)


@pytest.mark.parametrize("packed", [False, True])
def test_training_calls_hand_the_kept_logits_to_the_backward(monkeypatch, packed):
    layer = nat.NeighborhoodAttention2D(64, 2, 7)
    x = torch.randn(2, 9, 10, 64)
    seen = []
    for name in ("na_backward", "na_backward_packed"):
        original = getattr(cpu, name)

        def spy(*args, saved=None, original=original, **kwargs):
            seen.append(None if saved is None else tuple(saved.shape))
            return original(*args, saved=saved, **kwargs)

        monkeypatch.setitem(
            dispatch._BACKENDS, "cpu", dispatch._BACKENDS["cpu"]._replace(**{name[3:]: spy})
        )
    monkeypatch.setattr(dispatch, "_packed_backward_wins", lambda qkv: packed)
    layer(x).square().sum().backward()
    assert seen == [
        cpu.saved_shape(x.view(2, 9, 10, 2, 32), x.view(2, 9, 10, 2, 32), layer._params)
    ]
