"""Files that must not be lost or run: atomic writes, valid JSON and safe reading of tensor files.

Every file the project writes whole (checkpoints, summaries, logs rewritten from a checkpoint,
converted weights) goes through :func:`atomic_open`: a temporary file in the same directory,
flushed, fsynced and renamed over the old one, so a kill at any moment leaves either the old file
or the new one, never half of one. Every tensor file the project reads goes through
:func:`read_tensors`: safetensors, or ``torch.load(weights_only=True)``, so pickled code is refused,
never run, and every way a file can be unreadable ends in one :class:`CheckpointError` line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "CheckpointError",
    "atomic_open",
    "atomic_save",
    "atomic_write",
    "is_safetensors",
    "json_line",
    "json_safe",
    "read_tensors",
    "write_json",
]

PathLike = str | os.PathLike[str]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (empty, corrupt, pickled code) or does not fit."""


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path`` durably.

    On an exception the temporary file is removed and ``path`` keeps its previous content.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode={mode!r} must be 'w' or 'wb'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path: PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically."""
    with atomic_open(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)
    return Path(path)


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None``, so it serialises as valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(value) for value in obj]
    return obj


def json_line(obj: Any) -> str:
    """One line of valid JSON (JSON Lines); NaN and infinities become ``null``."""
    return json.dumps(json_safe(obj), allow_nan=False)


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, valid JSON (non-finite floats as ``null``), atomically."""
    return atomic_write(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def is_safetensors(path: PathLike) -> bool:
    """safetensors files start with an 8-byte little-endian header size, then a JSON object."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (size,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 8 + size <= path.stat().st_size


def read_tensors(path: PathLike, *, what: str = "checkpoint") -> Any:
    """Load a safetensors or PyTorch file onto the CPU, with ``weights_only=True``.

    Raises :class:`FileNotFoundError` for a missing file and :class:`CheckpointError` (one line
    naming ``what=path``) for an empty, truncated or corrupt file or one carrying pickled code.
    """
    path = Path(path)
    name = f"{what}={str(path)!r}"
    if not path.exists():
        raise FileNotFoundError(f"{name} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{name} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{name} is empty (0 bytes)")
    if is_safetensors(path):
        import safetensors.torch

        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError and OSError
            reason = _reason(err)
            raise CheckpointError(f"{name} is a corrupt safetensors file ({reason})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:
            detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", str(err))
            reason = detail.group(1) if detail else _reason(err)
            raise CheckpointError(f"{name} is truncated or corrupt ({reason})") from None
        raise CheckpointError(
            f"{name} carries pickled Python objects (it references {found.group(1)}); it is "
            f"refused because loading it "
            f"could run code (weights_only=True). Re-save only tensors "
            f"(torch.save(model.state_dict(), ...)) or use safetensors"
        ) from None
    except Exception as err:  # torch raises RuntimeError, EOFError, zipfile errors, ...
        raise CheckpointError(
            f"{name} is truncated or corrupt, or not a PyTorch or safetensors file ({_reason(err)})"
        ) from None


def _reason(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]
