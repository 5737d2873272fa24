"""``python -m nat`` (and ``torchrun -m nat``) runs the ``nat`` command."""

import sys

from .cli import main

sys.exit(main())
