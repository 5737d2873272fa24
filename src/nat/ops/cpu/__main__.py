"""``python -m nat.ops.cpu``: build (or find cached) the fused CPU kernel and say which."""

import sys

from . import is_available

built = is_available()
print("nat CPU kernel:", "ready" if built else "unavailable: the torch backend will be used")
sys.exit(0 if built else 1)
