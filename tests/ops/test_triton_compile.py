"""The Triton kernels compiled for a GPU (sm_90) without one: Triton's compiler and ``ptxas`` run
on the CPU, so errors that only compiled mode meets (types, layouts, shared memory) show here,
which the interpreter tests cannot catch. The launches are the wrapper's own, recorded."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from nat.ops import triton as triton_backend
from nat.ops.spec import check_window_args

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

_TYPES = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}


class _Recorder:
    """Stands for the kernels module: records each launch ``kernel[grid](*args, **constexprs)``."""

    def __init__(self, kernels) -> None:
        self.kernels = kernels
        self.launches: list = []

    def __getattr__(self, name: str):
        kernel = getattr(self.kernels, name)
        launches = self.launches

        class Launcher:
            def __getitem__(self, grid):
                return lambda *args, **constexprs: launches.append((kernel, args, constexprs))

        return Launcher()


def _compile_for_sm90(kernel, args, constexprs) -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constants = dict(constexprs)
    signature = {}
    for name, value in zip(kernel.arg_names, args, strict=False):
        if value is None:
            constants[name] = None
        elif isinstance(value, torch.Tensor):
            signature[name] = _TYPES[value.dtype]
        else:
            signature[name] = "fp32" if isinstance(value, float) else "i32"
    signature.update({name: "constexpr" for name in constants})
    source = ASTSource(kernel, signature, constants)
    triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


def _launches(monkeypatch, spatial, dtype, heads_kv, rpb: bool, **window) -> list:
    from nat.ops.triton import kernels

    recorder = _Recorder(kernels)
    monkeypatch.setattr(triton_backend, "load", lambda: recorder)
    params = check_window_args(spatial, **window)
    q = torch.randn(1, *spatial, 4, 32, dtype=dtype)
    kv = torch.randn(1, *spatial, heads_kv, 32, dtype=dtype)
    bias = torch.zeros(4, *(2 * k - 1 for k in params.kernel_size), dtype=dtype) if rpb else None
    out, lse = triton_backend.na_forward(q, kv, kv, bias, params)
    triton_backend.na_backward(torch.ones_like(out), q, kv, kv, bias, out, lse, params)
    return recorder.launches


def test_kernels_compile_for_sm90_with_rpb_in_bfloat16(monkeypatch):
    launches = _launches(monkeypatch, (14, 14), torch.bfloat16, 4, True, kernel_size=7)
    assert len(launches) == 3  # forward, dq, dk/dv
    for launch in launches:
        _compile_for_sm90(*launch)


@pytest.mark.slow
def test_kernels_compile_for_sm90_causal_gqa_float32_3d(monkeypatch):
    launches = _launches(
        monkeypatch,
        (6, 8, 8),
        torch.float32,
        2,
        False,
        kernel_size=(2, 3, 4),
        dilation=(1, 2, 1),
        stride=(1, 1, 2),
        is_causal=(True, False, False),
    )
    for launch in launches:
        _compile_for_sm90(*launch)
