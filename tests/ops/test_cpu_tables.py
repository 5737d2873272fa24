"""The CPU kernel's bias rows and its per-thread scratch.

The Python backend passes the rpb index table as its distinct rows plus each query's row
(``bias_pattern``); the kernel must compute exactly what it computes from the full ``[N, P]``
table, refuse a pattern that indexes outside the rows, and give the same results whatever calls
ran before on the same threads (its scratch memory is kept between calls).
"""

from __future__ import annotations

import pytest
import torch

from nat.ops import cpu
from nat.ops.spec import NAParams, neighbor_table

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="the CPU kernel is not built")

# (spatial, kernel, dilation, causal)
GEOMETRIES = [
    ((9, 11), (3, 5), (1, 2), (False, False)),
    ((7, 7), (7, 7), (1, 1), (False, False)),
    ((12, 10), (7, 7), (1, 1), (False, False)),
    ((20,), (7,), (2,), (False,)),
    ((4, 5, 6), (3, 3, 3), (1, 1, 1), (False, False, False)),
]


def _case(spatial, kernel, dilation, causal, head_dim, dtype, seed=0):
    params = NAParams(kernel, (1,) * len(kernel), dilation, causal, head_dim**-0.5)
    nbr, valid, bidx = neighbor_table(spatial, params, torch.device("cpu"))
    _, _, rows, pattern = cpu._tables(spatial, params)
    n = nbr.shape[0]
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, n, 3, head_dim, generator=g).to(dtype) for _ in "qkv")
    table = 1
    for size in kernel:
        table *= 2 * size - 1
    rpb = torch.randn(3, table, generator=g).to(dtype)
    grad = torch.randn(2, n, 3, head_dim, generator=g).to(dtype)
    return params, (q, k, v, rpb), (nbr, bidx, valid), (rows, pattern), grad


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize(
    ("head_dim", "dtype"),
    [(32, torch.float32), (32, torch.bfloat16), (16, torch.float16), (4, torch.float32)],
)
def test_bias_rows_compute_what_the_full_index_table_does(geometry, head_dim, dtype):
    params, (q, k, v, rpb), (nbr, bidx, valid), (rows, pattern), grad = _case(
        *geometry, head_dim, dtype
    )
    assert rows.shape[0] <= nbr.shape[0]
    assert torch.equal(rows[pattern.long()], bidx)
    module = cpu.module_for(dtype)
    full = module.na_forward(q, k, v, rpb, nbr, bidx, valid, params.scale)
    by_rows = module.na_forward(q, k, v, rpb, nbr, rows, valid, params.scale, bias_pattern=pattern)
    assert torch.equal(full[0], by_rows[0]) and torch.equal(full[1], by_rows[1])
    out, lse = full[0], full[1]
    want = module.na_backward(grad, q, k, v, rpb, out, lse, nbr, bidx, valid, None, params.scale)
    got = module.na_backward(
        grad, q, k, v, rpb, out, lse, nbr, rows, valid, None, params.scale, bias_pattern=pattern
    )
    for w, o in zip(want[:3], got[:3], strict=True):
        assert torch.equal(w, o)
    # dRPB sums each row's dS before adding it to the rpb entries: another order, same sums.
    torch.testing.assert_close(got[3], want[3], rtol=1e-5, atol=1e-5)


def test_distinct_rows_stay_few_on_large_maps():
    """Without dilation the window's place around its query takes at most K x K forms."""
    params = NAParams((7, 7), (1, 1), (1, 1), (False, False), 1.0)
    _, _, rows, pattern = cpu._tables((56, 56), params)
    assert rows.shape == (49, 49) and pattern.shape == (56 * 56,)


def _refusal_args():
    params, (q, k, v, rpb), (nbr, _, valid), (rows, pattern), _ = _case(
        (9, 11), (3, 5), (1, 2), (False, False), 32, torch.float32
    )
    return [q, k, v, rpb, nbr, rows, valid, params.scale], pattern


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r, p: (r, p + r.shape[0]), r"bias_pattern has entries in \[\d+, \d+\]; they must"),
        (lambda r, p: (r, p - 1), r"bias_pattern has entries in \[-1, "),
        (lambda r, p: (r, p[:-1]), r"bias_pattern has shape \[98\]; expected \[99\]"),
        (lambda r, p: (r, p.long()), r"bias_pattern has dtype Long"),
        (lambda r, p: (r + 1, p), r"bidx has entries in \[1, "),
        (lambda r, p: (r[:, :-1].contiguous(), p), r"bidx has shape \[\d+, 14\]; expected"),
        (lambda r, p: (r[0], p), r"bidx has shape \[15\]; expected \[U, P\]"),
    ],
)
def test_malformed_bias_rows_are_refused(change, message):
    args, pattern = _refusal_args()
    args[5], pattern = change(args[5], pattern)
    module = cpu.module_for(torch.float32)
    with pytest.raises(RuntimeError, match=message):
        module.na_forward(*args, bias_pattern=pattern)


def test_results_do_not_depend_on_earlier_calls():
    """Scratch kept between calls (grown for a large map, reused for a small one) holds nothing
    a later call reads before writing."""
    small = _case((7, 7), (7, 7), (1, 1), (False, False), 32, torch.bfloat16, seed=1)
    large = _case((30, 30), (5, 5), (1, 1), (False, False), 32, torch.bfloat16, seed=2)

    def run(case):
        params, (q, k, v, rpb), (nbr, _, valid), (rows, pattern), grad = case
        module = cpu.module_for(q.dtype)
        args = (nbr, rows, valid)
        out, lse, _ = module.na_forward(q, k, v, rpb, *args, params.scale, bias_pattern=pattern)
        grads = module.na_backward(
            grad, q, k, v, rpb, out, lse, *args, None, params.scale, bias_pattern=pattern
        )
        return [out, lse, *grads]

    first = run(small)
    run(large)
    for a, b in zip(first, run(small), strict=True):
        assert torch.equal(a, b)


def test_large_scratch_is_released_and_rebuilt():
    """A backward whose per-thread scratch passes the size kept between calls (8 MiB of floats
    here: 36,000 tokens x 64 window slots) frees it after the call: the next call, and a small
    one after it, still compute the torch backend's gradients."""
    import nat

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 36_000, 1, 16, generator=g) for _ in "qkv")
    rpb = torch.randn(1, 2 * 63 - 1, generator=g)

    def grads(backend, length):
        leaves = [t[:, :length].clone().requires_grad_() for t in (q, k, v)] + [
            rpb.clone().requires_grad_()
        ]
        out = nat.na1d(*leaves[:3], 63, rpb=leaves[3], backend=backend)
        out.backward(torch.ones_like(out))
        return [out] + [t.grad for t in leaves]

    for length in (36_000, 36_000, 500):
        for got, want in zip(grads("cpu", length), grads("torch", length), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
