"""The fused CPU backend: a C++ kernel built with PyTorch's ``cpp_extension``.

The kernel (``na_cpu.cpp``) is compiled once per machine, the first time it is needed (or by
``python -m nat.ops.cpu``, which ``make install`` runs), and cached by PyTorch. Without a working
compiler the backend reports itself unavailable and the dispatcher falls back to the composite
``torch`` backend.

On AMD CPUs with AVX-512 it is compiled twice: float32 calls run a build with 8-lane (256-bit)
vectors, everything else the native 16-lane one (with AVX512-BF16's dot products where the CPU
has them). On a Zen 5 EPYC the 16-lane build's float32 calls ran up to 1.9x slower than the
8-lane one's, depending on where their tensors lay, while its bfloat16 calls took 0.69-0.75x the
8-lane build's time (``docs/benchmarks.md``, round sixteen). With round seventeen's kernel the two
builds gave NAT-Tiny's float32 training step and inference pass the same speed there. The
environment variable ``NAT_CPU_FLOAT32_LANES`` (``8`` or ``16``) overrides the choice.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import platform
from pathlib import Path
from types import ModuleType

import torch

from ..spec import NAParams, neighbor_table
from ..torch_backend import heads_last

__all__ = [
    "FLOAT32_LANES_VARIABLE",
    "is_available",
    "lanes_for",
    "load",
    "module_for",
    "na_backward",
    "na_backward_packed",
    "na_forward",
    "na_forward_saving",
    "narrow_float32",
    "saved_shape",
    "vector_lanes",
]

_SOURCE = Path(__file__).with_name("na_cpu.cpp")
_log = logging.getLogger(__name__)


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` line of ``/proc/cpuinfo`` (``flags``, ``vendor_id``), whole; ``None``
    where there is no such file or line."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line for line in lines if line.startswith(field)), None)


def _machine_tag() -> str:
    """Distinguishes builds for different CPUs: the kernel is compiled with ``-march=native``."""
    flags = _cpuinfo("flags") or platform.processor()
    source = _SOURCE.read_bytes()
    return hashlib.sha256(flags.encode() + source).hexdigest()[:10]


@functools.cache
def load(narrow: bool = False) -> ModuleType | None:
    """The compiled extension, or ``None`` (with a logged reason) when it cannot be built.

    ``narrow``: the build with 8-lane vectors even where the CPU has AVX-512 (``-DNAT_LANES8``);
    otherwise the native one. The first call on a machine compiles it (30-60 s) and says so in
    one line on stderr; later calls load the cached build silently. The source is compiled from a
    copy inside the build directory, so every checkout or install of the same source shares one
    build.
    """
    import sys

    from ...files import atomic_write

    # Importing cpp_extension warns "No CUDA runtime is found" on machines without a GPU.
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension

        name = f"nat_cpu{'8' if narrow else ''}_{_machine_tag()}"
        build = Path(cpp_extension._get_build_directory(name, verbose=False))
        source = build / _SOURCE.name
        code = _SOURCE.read_bytes()
        if not source.is_file() or source.read_bytes() != code:
            atomic_write(source, code)
        ninja = build / "build.ninja"
        if not (build / f"{name}.so").is_file() or str(source) not in ninja.read_text():
            print(
                f"nat: compiling the fused CPU kernel{' (8-lane float32 build)' if narrow else ''}"
                " for this machine (once, 30-60 s) ...",
                file=sys.stderr,
                flush=True,
            )
        return cpp_extension.load(
            name=name,
            sources=[str(source)],
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"]
            + (["-DNAT_LANES8"] if narrow else []),
            extra_ldflags=["-fopenmp"],
            build_directory=str(build),
            verbose=False,
        )
    except Exception as err:  # a missing compiler, headers or an unsupported platform
        _log.warning("nat: the fused CPU kernel could not be built (%s); using 'torch'", err)
        return None
    finally:
        cpp_log.setLevel(level)


@torch.compiler.assume_constant_result
def is_available() -> bool:
    """Whether the kernel is built (building it on first call); a constant under torch.compile.

    Raises ``ValueError`` for a malformed ``NAT_CPU_FLOAT32_LANES`` (:func:`narrow_float32`), so
    that the setting is refused before any backend is chosen, not call by call."""
    if load() is None:
        return False
    narrow_float32()
    return True


FLOAT32_LANES_VARIABLE = "NAT_CPU_FLOAT32_LANES"
"""Environment variable choosing the float32 calls' build where the CPU has AVX-512: ``8``
(the narrow build) or ``16`` (the native one); unset, :func:`narrow_float32` decides."""


def _cpu_vendor() -> str:
    """``vendor_id`` from ``/proc/cpuinfo`` (``AuthenticAMD``, ``GenuineIntel``); ``""`` if none."""
    line = _cpuinfo("vendor_id")
    return "" if line is None else line.split(":", 1)[1].strip()


@functools.cache
def narrow_float32() -> bool:
    """Whether float32 calls run the 8-lane build although the native one has 16 lanes.

    ``NAT_CPU_FLOAT32_LANES`` decides when set (``8``: yes, ``16``: no); otherwise yes on AMD
    CPUs (measured on Zen 5, module docstring), no elsewhere. Always no where the native build
    already has 8 lanes (no AVX-512) or is missing.
    """
    choice = os.environ.get(FLOAT32_LANES_VARIABLE, "").strip()
    if choice not in ("", "8", "16"):
        raise ValueError(f"{FLOAT32_LANES_VARIABLE}={choice!r}; expected 8, 16 or unset")
    native = load()
    if native is None or int(native.vector_lanes()) == 8:
        return False
    return choice == "8" if choice else _cpu_vendor() == "AuthenticAMD"


def module_for(dtype: torch.dtype) -> ModuleType | None:
    """The build that runs ``dtype`` calls: the 8-lane one for float32 where
    :func:`narrow_float32` (the native one if it cannot be built), the native one otherwise."""
    if dtype == torch.float32 and narrow_float32():
        narrow = load(narrow=True)
        if narrow is not None:
            return narrow
    return load()


def lanes_for(dtype: torch.dtype) -> int:
    """float32 lanes per vector in the vector path of the build that runs ``dtype`` calls: 16
    with AVX-512, 8 elsewhere (one AVX2 register on x86) and in the narrow build; 0 when the
    kernel is not built."""
    module = module_for(dtype)
    return 0 if module is None else int(module.vector_lanes())


@torch.compiler.assume_constant_result
def vector_lanes() -> int:
    """:func:`lanes_for` float32: the float32 calls' vector width (a constant for
    ``torch.compile``)."""
    return lanes_for(torch.float32)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``[B, *spatial, heads, D]`` as ``[B, N, heads, D]`` with a contiguous last axis.

    A view whenever the strides allow (the kernel reads the other axes through their strides);
    otherwise a copy.
    """
    t = t.reshape(t.shape[0], math.prod(t.shape[1:-2]), *t.shape[-2:])
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _rpb_rows(rpb: torch.Tensor | None) -> torch.Tensor | None:
    """``[heads, *(2K - 1)]`` as the contiguous ``[heads, R]`` table the kernel indexes."""
    return None if rpb is None else rpb.reshape(rpb.shape[0], -1).contiguous()


def na_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    params: NAParams,
    need_lse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output ``[B, *spatial, heads, Dv]`` and log-sum-exp ``[B, heads, N]`` (float32+).

    Key and value may have fewer heads than the query (grouped-query attention): the kernel maps
    query head ``h`` to key/value head ``h // (heads // heads_kv)``.
    """
    out, lse, _ = _kernel_forward(query, key, value, rpb, params, False)
    return out, lse


@functools.lru_cache(maxsize=256)
def _distinct_bias_rows(spatial, kernel_size, stride, dilation, is_causal):
    params = NAParams(kernel_size, stride, dilation, is_causal, 1.0)
    bias_idx = neighbor_table(spatial, params, torch.device("cpu"))[2]
    rows, pattern = torch.unique(bias_idx, dim=0, return_inverse=True)
    return rows.to(torch.int32).contiguous(), pattern.to(torch.int32).contiguous()


def _tables(spatial: tuple[int, ...], params: NAParams):
    """The kernel's tables: neighbours ``[N, P]``, valid ``[N, P]`` or ``None``, the distinct rows
    of the rpb index table ``[U, P]`` and each query's row ``[N]``. Queries whose windows sit alike
    around them share a row: without dilation at most ``prod(kernel_size)`` rows however large
    the map, so the kernel turns rpb into those rows of biases once per call and loads them
    (``BiasRows`` in ``na_cpu.cpp``). Cached per geometry."""
    nbr, valid, _ = neighbor_table(spatial, params, torch.device("cpu"))
    rows, pattern = _distinct_bias_rows(
        spatial, params.kernel_size, params.stride, params.dilation, params.is_causal
    )
    return nbr, valid, rows, pattern


def _kernel_forward(query, key, value, rpb, params, keep_logits):
    spatial = tuple(query.shape[1:-2])
    nbr, valid, bias_rows, pattern = _tables(spatial, params)
    out, lse, logits = module_for(query.dtype).na_forward(
        _rows(query),
        _rows(key),
        _rows(value),
        _rpb_rows(rpb),
        nbr,
        bias_rows,
        valid,
        params.scale,
        keep_logits,
        pattern,
    )
    return out.reshape(*query.shape[:-1], value.shape[-1]), lse, logits


def _keeps_logits(query: torch.Tensor, value: torch.Tensor, params: NAParams) -> bool:
    """Whether a forward for autograd keeps the window logits for the backward: where the kernel's
    vector path runs and they take no more memory than the call's q, k, v and output rows (a
    window of at most ``3 * D + Dv`` slots: NAT's 7 x 7 = 49 at head_dim 16 and up)."""
    return (
        query.dtype in _PACKED_DTYPES
        and query.shape[-1] in VECTOR_HEAD_DIMS
        and query.shape[-1] == value.shape[-1]
        and math.prod(params.kernel_size) <= 3 * query.shape[-1] + value.shape[-1]
    )


def saved_shape(query: torch.Tensor, value: torch.Tensor, params: NAParams) -> tuple[int, ...]:
    """The shape of what :func:`na_forward_saving` keeps for the call (``(0,)``: nothing)."""
    lanes = lanes_for(query.dtype)
    if not _keeps_logits(query, value, params) or lanes == 0:
        return (0,)
    slots = -(-math.prod(params.kernel_size) // lanes) * lanes
    return (query.shape[0], query.shape[-2], math.prod(query.shape[1:-2]), slots)


def na_forward_saving(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    params: NAParams,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`na_forward` for autograd: output, log-sum-exp, and what the backward reuses.

    Where :func:`_keeps_logits`, that is every window's logits ``[B, heads, N, P]`` (``P``
    rounded up to whole vectors; float32), which :func:`na_backward` then reads instead of
    computing them again; elsewhere an empty tensor. The gradients are the same to the bit where
    the kernel has 8 lanes (AVX2); with AVX-512 the float32 backward summed its recomputed logits
    in another order, so they agree there to rounding.
    """
    return _kernel_forward(query, key, value, rpb, params, _keeps_logits(query, value, params))


def na_backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    params: NAParams,
    grad_lse: torch.Tensor | None = None,
    saved: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients for query, key, value and rpb (``None`` without rpb).

    ``grad_lse`` ``[B, heads, N]`` is the gradient reaching the log-sum-exp, if any; ``saved``
    what :func:`na_forward_saving` kept.
    """
    dq, dk, dv, drpb = _kernel_backward(
        grad_out, query, key, value, rpb, out, lse, params, grad_lse, None, saved
    )
    return heads_last(dq, query), heads_last(dk, key), heads_last(dv, value), drpb


def _kernel_backward(grad_out, query, key, value, rpb, out, lse, params, grad_lse, dqkv, saved):
    """The kernel's four gradients (head-major, or views of ``dqkv`` when given), rpb's shaped
    like it (``None`` without rpb)."""
    spatial = tuple(query.shape[1:-2])
    nbr, valid, bias_rows, pattern = _tables(spatial, params)
    dq, dk, dv, drpb = module_for(query.dtype).na_backward(
        _rows(grad_out).contiguous(),
        _rows(query),
        _rows(key),
        _rows(value),
        _rpb_rows(rpb),
        _rows(out).contiguous(),
        lse.contiguous(),
        nbr,
        bias_rows,
        valid,
        None if grad_lse is None else grad_lse.to(lse.dtype).contiguous(),
        params.scale,
        dqkv,
        saved,
        pattern,
    )
    return dq, dk, dv, None if rpb is None else drpb.to(rpb.dtype).reshape(rpb.shape)


def na_backward_packed(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    rpb: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    params: NAParams,
    grad_lse: torch.Tensor | None = None,
    saved: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gradient of a packed ``[B, *spatial, 3, heads, D]`` query/key/value, and rpb's.

    The kernel writes dQ, dK and dV into one contiguous tensor of ``qkv``'s shape, so nothing has
    to stack them afterwards. Calls the kernel's vector path cannot write that way (float64, a
    head_dim other than 16, 32, 64 or 128) get :func:`na_backward`'s gradients, stacked.
    """
    query, key, value = qkv.unbind(-3)
    if qkv.dtype not in _PACKED_DTYPES or qkv.shape[-1] not in VECTOR_HEAD_DIMS:
        dq, dk, dv, drpb = na_backward(
            grad_out, query, key, value, rpb, out, lse, params, grad_lse, saved
        )
        return torch.stack((dq, dk, dv), dim=-3), drpb
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    rows = dqkv.view(qkv.shape[0], math.prod(qkv.shape[1:-3]), *qkv.shape[-3:])
    *_, drpb = _kernel_backward(
        grad_out, query, key, value, rpb, out, lse, params, grad_lse, rows, saved
    )
    return dqkv, drpb


_PACKED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""What :func:`na_backward_packed` sends to the kernel's vector path, with ``VECTOR_HEAD_DIMS``."""
VECTOR_HEAD_DIMS = (16, 32, 64, 128)
"""Head dims the kernel's vector path takes (``with_vec_dims``); others run its scalar loops."""
