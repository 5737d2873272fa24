"""NATTEN 0.21-style calls run here and agree with the reference.

Each test writes a call the way NATTEN 0.21's ``na1d/na2d/na3d``, ``attention`` and
``merge_attentions`` take it (argument names, positions, ``None`` defaults, grouped-query heads,
``return_lse``, extra key/value tokens) and checks the result, forward and backward, against
:func:`nat.ops.reference.na_reference`, which computes the softmax over the union of the
neighbourhood and the extra tokens directly instead of merging.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import nat
from nat.ops import available_backends, functional
from nat.ops.reference import na_reference
from nat.ops.spec import NAParams

BACKENDS = [b for b in available_backends("cpu") if b != "reference"]
ALL_BACKENDS = [*BACKENDS, "reference"]

# (spatial, kernel_size, stride, dilation, is_causal): one per rank, plus the dense path
# (window == input), a causal one and a strided one.
WINDOWS = [
    ((9,), 3, 1, 2, False),
    ((6, 7), (3, 4), (1, 2), (2, 1), (False, False)),
    ((4, 5, 6), 3, 1, (1, 1, 2), (True, False, False)),
    ((5, 5), 5, 1, 1, False),
]


def tensors(spatial, heads=4, heads_kv=4, dim=8, dim_v=8, batch=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, *spatial, heads, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, *spatial, heads_kv, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, *spatial, heads_kv, dim_v, generator=g, dtype=dtype)
    return q, k, v


def params(spatial, kernel_size, stride, dilation, is_causal, scale) -> NAParams:
    n = len(spatial)

    def tup(x):
        return tuple(x) if isinstance(x, tuple) else (x,) * n

    return NAParams(tup(kernel_size), tup(stride), tup(dilation), tup(is_causal), scale)


def grads_of(fn, inputs, seed=1):
    """Outputs of ``fn(*inputs)`` and the gradients of a random weighting of all of them."""
    inputs = [t.clone().requires_grad_() for t in inputs]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    loss.backward()
    return [o.detach() for o in outs], [t.grad for t in inputs]


def assert_all_close(actual, expected, tol=1e-9):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)


# ---- argument conventions ------------------------------------------------------------------


def test_none_means_default_for_stride_dilation_and_is_causal():
    q, k, v = tensors((6, 7))
    expected = nat.na2d(q, k, v, 3)
    out = nat.na2d(q, k, v, kernel_size=3, stride=None, dilation=None, is_causal=None)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_natten_positional_order():
    """NATTEN's positions: kernel_size, stride, dilation, is_causal, scale."""
    q, k, v = tensors((8, 9))
    out = nat.na2d(q, k, v, (3, 5), (2, 1), (2, 1), (False, True), 0.3)
    expected = na_reference(q, k, v, NAParams((3, 5), (2, 1), (2, 1), (False, True), 0.3))
    torch.testing.assert_close(out, expected)


def test_rpb_is_keyword_only():
    """Position 9 is NATTEN's additional_keys, so rpb cannot be passed by position."""
    q, k, v = tensors((6, 7))
    rpb = torch.zeros(4, 5, 5, dtype=q.dtype)
    with pytest.raises(ValueError, match="additional_keys has shape"):
        nat.na2d(q, k, v, 3, 1, 1, False, None, rpb, rpb)


def test_scale_zero_means_zero():
    """Uniform weights over each neighbourhood (NATTEN 0.21 would use the default scale)."""
    q, k, v = tensors((9,), heads=1, heads_kv=1)
    out = nat.na1d(q, k, v, 3, scale=0.0)
    windows = torch.stack([v[:, i : i + 3].mean(1) for i in (0, *range(7), 6)], dim=1)
    torch.testing.assert_close(out, windows)
    assert not torch.allclose(out, nat.na1d(q, k, v, 3))


@pytest.fixture
def fresh_notes(monkeypatch):
    monkeypatch.setattr(functional, "_NOTED", set())


@pytest.mark.usefixtures("fresh_notes")
def test_tuning_arguments_are_accepted_ignored_and_noted_once():
    q, k, v = tensors((6, 7))
    expected = nat.na2d(q, k, v, 3)
    tuning = dict(
        q_tile_shape=(8, 8),
        kv_tile_shape=(8, 8),
        backward_q_tile_shape=(8, 8),
        backward_kv_tile_shape=(8, 8),
        backward_kv_splits=(1, 1),
        backward_use_pt_reduction=True,
        run_persistent_kernel=False,
        kernel_schedule="coop",
        torch_compile=True,
        attention_kwargs={"backend": "cutlass-fmha"},
    )
    with pytest.warns(UserWarning) as first:
        out = nat.na2d(q, k, v, 3, **tuning)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    noted = {str(w.message).split("=")[0] for w in first}
    assert noted == set(tuning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nat.na2d(q, k, v, 3, **tuning)


@pytest.mark.usefixtures("fresh_notes")
def test_default_tuning_arguments_say_nothing():
    q, k, v = tensors((6, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nat.na2d(q, k, v, 3, q_tile_shape=None, run_persistent_kernel=True, torch_compile=False)


def test_attention_kwargs_must_be_a_dict():
    q, k, v = tensors((6, 7))
    with pytest.raises(TypeError, match=r"attention_kwargs=\['backend'\] must be a dict or None"):
        nat.na2d(q, k, v, 3, attention_kwargs=["backend"])


@pytest.mark.parametrize(
    ("natten_name", "ours"),
    [("cutlass-fna", BACKENDS[0]), ("hopper-fna", BACKENDS[0]), ("flex-fna", "torch")],
)
def test_natten_backend_names_run_the_nearest_backend(natten_name, ours):
    q, k, v = tensors((6, 7))
    out = nat.na2d(q, k, v, 3, backend=natten_name)
    torch.testing.assert_close(out, nat.na2d(q, k, v, 3, backend=ours), rtol=0, atol=0)
    with nat.use_backend(natten_name):
        torch.testing.assert_close(nat.na2d(q, k, v, 3), out, rtol=0, atol=0)


def test_unknown_backend_lists_ours_and_natten_names():
    q, k, v = tensors((6, 7))
    with pytest.raises(ValueError, match=r"backend='cuda-fna' is not one of \['auto', 'reference'"):
        nat.na2d(q, k, v, 3, backend="cuda-fna")
    with pytest.raises(ValueError, match=r"or NATTEN's \['cutlass-fna'.*'flex-fna'\]"):
        nat.na2d(q, k, v, 3, backend="cuda-fna")


# ---- return_lse ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: str(w[0]))
def test_return_lse_matches_reference_with_gradients_through_both(backend, window):
    spatial, kernel, stride, dilation, causal = window
    q, k, v = tensors(spatial, dim_v=6)

    def ours(q, k, v):
        return nat.neighborhood_attention(
            q, k, v, kernel, stride, dilation, causal, return_lse=True, backend=backend
        )

    def reference(q, k, v):
        p = params(spatial, kernel, stride, dilation, causal, 8**-0.5)
        return na_reference(q, k, v, p, return_lse=True)

    outs, grads = grads_of(ours, (q, k, v))
    expected_outs, expected_grads = grads_of(reference, (q, k, v))
    assert outs[1].shape == (2, *spatial, 4) and outs[1].dtype == torch.float64
    assert_all_close(outs, expected_outs)
    assert_all_close(grads, expected_grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_return_lse_without_gradients_float32(backend):
    q, k, v = (t.float() for t in tensors((6, 7)))
    with torch.no_grad():
        out, lse = nat.na2d(q, k, v, 3, return_lse=True, backend=backend)
    expected = na_reference(q, k, v, params((6, 7), 3, 1, 1, False, 8**-0.5), return_lse=True)
    assert lse.dtype == torch.float32
    torch.testing.assert_close(out, expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, expected[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_of_the_lse_alone(backend):
    """The output unused: only the log-sum-exp carries a gradient."""
    q, k, v = tensors((6, 7))
    p = params((6, 7), 3, 1, 1, False, 8**-0.5)
    _, grads = grads_of(
        lambda q, k, v: nat.na2d(q, k, v, 3, return_lse=True, backend=backend)[1], (q, k, v)
    )
    _, expected = grads_of(lambda q, k: na_reference(q, k, v, p, return_lse=True)[1], (q, k))
    assert_all_close(grads[:2], expected)
    assert grads[2].abs().max() == 0  # the value does not reach the log-sum-exp


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("heads_kv", [4, 2])
def test_lse_gradient_float32(backend, heads_kv):
    """head_dim 16 in float32 takes the CPU kernel's vectorised backward."""
    q, k, v = (t.float() for t in tensors((7, 8), heads=4, heads_kv=heads_kv, dim=16, dim_v=16))

    def ours(q, k, v):
        return nat.na2d(q, k, v, 3, dilation=2, return_lse=True, backend=backend)

    def repeated(q, k, v):
        k, v = (t.repeat_interleave(4 // heads_kv, dim=-2) for t in (k, v))
        return na_reference(q, k, v, params((7, 8), 3, 1, 2, False, 0.25), return_lse=True)

    outs, grads = grads_of(ours, (q, k, v))
    expected_outs, expected_grads = grads_of(repeated, (q, k, v))
    assert_all_close(outs, expected_outs, tol=2e-5)
    assert_all_close(grads, expected_grads, tol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_return_lse_with_rpb(backend):
    q, k, v = tensors((7, 6))
    rpb = torch.randn(4, 5, 3, dtype=q.dtype, generator=torch.Generator().manual_seed(3))

    def ours(q, k, v, rpb):
        return nat.na2d(q, k, v, (3, 2), dilation=(2, 1), return_lse=True, rpb=rpb, backend=backend)

    def reference(q, k, v, rpb):
        p = params((7, 6), (3, 2), 1, (2, 1), False, 8**-0.5)
        return na_reference(q, k, v, p, rpb, return_lse=True)

    with pytest.raises(ValueError, match="rpb is only defined for odd kernel sizes"):
        ours(q, k, v, rpb)
    rpb = torch.randn(4, 5, 5, dtype=q.dtype)

    def ours_odd(q, k, v, rpb):
        return nat.na2d(q, k, v, 3, dilation=(2, 1), return_lse=True, rpb=rpb, backend=backend)

    def reference_odd(q, k, v, rpb):
        return na_reference(
            q, k, v, params((7, 6), 3, 1, (2, 1), False, 8**-0.5), rpb, None, None, True
        )

    outs, grads = grads_of(ours_odd, (q, k, v, rpb))
    expected_outs, expected_grads = grads_of(reference_odd, (q, k, v, rpb))
    assert_all_close(outs, expected_outs)
    assert_all_close(grads, expected_grads)


# ---- grouped-query / multi-query attention -------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("heads_kv", [2, 1])
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: str(w[0]))
def test_grouped_query_attention_matches_repeated_heads(backend, heads_kv, window):
    spatial, kernel, stride, dilation, causal = window
    q, k, v = tensors(spatial, heads=4, heads_kv=heads_kv, dim_v=6)

    def ours(q, k, v):
        return nat.neighborhood_attention(
            q, k, v, kernel, stride, dilation, causal, backend=backend, return_lse=True
        )

    def repeated(q, k, v):
        k, v = (t.repeat_interleave(4 // heads_kv, dim=-2) for t in (k, v))
        p = params(spatial, kernel, stride, dilation, causal, 8**-0.5)
        return na_reference(q, k, v, p, return_lse=True)

    outs, grads = grads_of(ours, (q, k, v))
    expected_outs, expected_grads = grads_of(repeated, (q, k, v))
    assert grads[1].shape == k.shape and grads[2].shape == v.shape
    assert_all_close(outs, expected_outs)
    assert_all_close(grads, expected_grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spatial", [(7, 8), (5, 5)], ids=["window", "dense"])
def test_grouped_query_attention_with_rpb_float32(backend, spatial):
    """float32 takes the CPU kernel's vectorised path (head_dim 16) and the fused dense one."""
    q, k, v = (t.float() for t in tensors(spatial, heads=4, heads_kv=2, dim=16, dim_v=16))
    rpb = torch.randn(4, 9, 9, generator=torch.Generator().manual_seed(2))

    def ours(q, k, v, rpb):
        return nat.na2d(q, k, v, 5, rpb=rpb, backend=backend)

    def repeated(q, k, v, rpb):
        k, v = (t.repeat_interleave(2, dim=-2) for t in (k, v))
        return na_reference(q, k, v, params(spatial, 5, 1, 1, False, 0.25), rpb)

    outs, grads = grads_of(ours, (q, k, v, rpb))
    expected_outs, expected_grads = grads_of(repeated, (q, k, v, rpb))
    assert_all_close(outs, expected_outs, tol=2e-5)
    assert_all_close(grads, expected_grads, tol=1e-4)


def test_heads_must_be_a_multiple_of_key_heads():
    q, k, v = tensors((6, 7), heads=4, heads_kv=3)
    with pytest.raises(ValueError, match=r"key has 3 heads but query has 4; query's heads must"):
        nat.na2d(q, k, v, 3)


def test_value_heads_must_match_key_heads():
    q, k, _ = tensors((6, 7), heads=4, heads_kv=2)
    v = torch.randn(2, 6, 7, 4, 8, dtype=q.dtype)
    with pytest.raises(ValueError, match=r"value has shape \(2, 6, 7, 4, 8\); .* must match key's"):
        nat.na2d(q, k, v, 3)


# ---- additional key/value tokens and merging -----------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("heads_kv", [4, 2])
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: str(w[0]))
def test_additional_tokens_share_the_softmax(backend, heads_kv, window):
    spatial, kernel, stride, dilation, causal = window
    q, k, v = tensors(spatial, heads=4, heads_kv=heads_kv, dim_v=6)
    g = torch.Generator().manual_seed(5)
    extra_k = torch.randn(2, 3, heads_kv, 8, generator=g, dtype=q.dtype)
    extra_v = torch.randn(2, 3, heads_kv, 6, generator=g, dtype=q.dtype)

    def ours(q, k, v, extra_k, extra_v):
        return nat.neighborhood_attention(
            q,
            k,
            v,
            kernel,
            stride,
            dilation,
            causal,
            additional_keys=extra_k,
            additional_values=extra_v,
            backend=backend,
            return_lse=True,
        )

    def reference(q, k, v, extra_k, extra_v):
        p = params(spatial, kernel, stride, dilation, causal, 8**-0.5)
        return na_reference(q, k, v, p, None, extra_k, extra_v, return_lse=True)

    inputs = (q, k, v, extra_k, extra_v)
    outs, grads = grads_of(ours, inputs)
    expected_outs, expected_grads = grads_of(reference, inputs)
    assert_all_close(outs, expected_outs)
    assert_all_close(grads, expected_grads)


def test_additional_tokens_with_rpb_bias_only_the_neighbourhood():
    q, k, v = tensors((6, 7))
    rpb = torch.randn(4, 5, 5, dtype=q.dtype)
    extra_k, extra_v = (torch.randn(2, 2, 4, 8, dtype=q.dtype) for _ in "kv")
    out = nat.na2d(q, k, v, 3, additional_keys=extra_k, additional_values=extra_v, rpb=rpb)
    p = params((6, 7), 3, 1, 1, False, 8**-0.5)
    torch.testing.assert_close(out, na_reference(q, k, v, p, rpb, extra_k, extra_v))


def test_additional_keys_without_values():
    q, k, v = tensors((6, 7))
    with pytest.raises(ValueError, match="additional_values is None but the other is a tensor"):
        nat.na2d(q, k, v, 3, additional_keys=torch.randn(2, 2, 4, 8, dtype=q.dtype))


def test_additional_tokens_of_another_head_count():
    q, k, v = tensors((6, 7), heads=4, heads_kv=2)
    extra = torch.randn(2, 2, 4, 8, dtype=q.dtype)
    with pytest.raises(ValueError, match=r"additional_keys has shape \(2, 2, 4, 8\); expected"):
        nat.na2d(q, k, v, 3, additional_keys=extra, additional_values=extra)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads_kv", [4, 1])
def test_dense_attention_matches_sdpa(causal, heads_kv):
    q, k, v = (t.flatten(1, 2) for t in tensors((3, 4), heads=4, heads_kv=heads_kv))
    out, lse = nat.attention(q, k, v, is_causal=causal, return_lse=True)
    kr, vr = (t.repeat_interleave(4 // heads_kv, dim=2).transpose(1, 2) for t in (k, v))
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), kr, vr, is_causal=causal
    ).transpose(1, 2)
    scores = (q.transpose(1, 2) @ kr.transpose(-1, -2)) * 8**-0.5
    if causal:
        scores = scores.masked_fill(torch.ones(12, 12, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(lse, scores.logsumexp(-1).transpose(1, 2))


def test_dense_attention_checks_its_arguments():
    q = torch.randn(2, 5, 4, 8)
    with pytest.raises(ValueError, match=r"attention expects rank 4: \[batch, tokens, heads"):
        nat.attention(q, q[:, None], q)
    with pytest.raises(ValueError, match=r"is_causal=True needs as many keys as queries"):
        nat.attention(q, q[:, :3], q[:, :3], is_causal=True)
    with pytest.raises(ValueError, match=r"key has 3 heads but query has 4"):
        nat.attention(q, q[:, :, :3], q[:, :, :3])


@pytest.mark.parametrize("pieces", [2, 3])
def test_merging_partial_attentions_is_exact_and_differentiable(pieces):
    """Attention over disjoint key sets, merged, equals attention over their union."""
    q, k, v = (t.flatten(1, 2) for t in tensors((3, 4), heads=2, heads_kv=2, dim_v=5))
    splits = torch.tensor_split(torch.arange(12), pieces)

    def merged(q, k, v):
        parts = [nat.attention(q, k[:, s], v[:, s], return_lse=True) for s in splits]
        return nat.merge_attentions([o for o, _ in parts], [lse for _, lse in parts])

    def whole(q, k, v):
        return nat.attention(q, k, v, return_lse=True)

    outs, grads = grads_of(merged, (q, k, v))
    expected_outs, expected_grads = grads_of(whole, (q, k, v))
    assert_all_close(outs, expected_outs)
    assert_all_close(grads, expected_grads)


def test_merge_needs_matching_shapes():
    out = torch.randn(2, 5, 2, 4)
    lse = torch.randn(2, 5, 2)
    with pytest.raises(ValueError, match="needs at least two outputs with one lse each"):
        nat.merge_attentions([out], [lse])
    with pytest.raises(ValueError, match=r"lse_tensors\[1\] has shape \(2, 5\); expected"):
        nat.merge_attentions([out, out], [lse, lse[..., 0]])
