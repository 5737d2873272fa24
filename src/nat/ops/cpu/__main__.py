"""``python -m nat.ops.cpu``: build (or find cached) the fused CPU kernel and say which."""

import sys

import torch

from . import is_available, lanes_for

try:
    built = is_available()
except ValueError as err:  # a malformed NAT_CPU_FLOAT32_LANES
    print(f"nat CPU kernel: {err}", file=sys.stderr)
    sys.exit(2)
if built:
    # Builds the 8-lane float32 build too, where float32 calls run it.
    wide, float32 = lanes_for(torch.bfloat16), lanes_for(torch.float32)
    note = f"; float32 in the {float32}-lane build" if float32 != wide else ""
    print(f"nat CPU kernel: ready ({wide}-lane vectors{note})")
else:
    print("nat CPU kernel: unavailable: the torch backend will be used")
sys.exit(0 if built else 1)
