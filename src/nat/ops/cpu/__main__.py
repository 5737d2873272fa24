"""``python -m nat.ops.cpu``: build (or find cached) the fused CPU kernel and say which."""

import sys

import torch

from . import is_available, lanes_for, narrow_float32

built = is_available()
if built:
    lanes = {dtype: lanes_for(dtype) for dtype in (torch.float32, torch.bfloat16)}
    note = "; float32 in the 8-lane build" if narrow_float32() else ""
    print(f"nat CPU kernel: ready ({lanes[torch.bfloat16]}-lane vectors{note})")
else:
    print("nat CPU kernel: unavailable: the torch backend will be used")
sys.exit(0 if built else 1)
