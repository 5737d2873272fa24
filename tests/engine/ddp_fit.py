"""Run by ``torchrun`` in ``test_fit.py``: a fit whose loss is NaN on rank 1 only, at the first
step of epoch 2; each rank writes the error it stopped with to ``<dir>/rank<r>.err``."""

import os
import sys
from pathlib import Path

from fitting import STEPS_PER_EPOCH, run_fit

from nat.engine import NonFiniteLossError, init_distributed

if __name__ == "__main__":
    root, env = Path(sys.argv[1]), init_distributed("cpu")
    try:
        run_fit(root / "run", env=env, nan_at=STEPS_PER_EPOCH if env.rank == 1 else None)
    except NonFiniteLossError as err:
        (root / f"rank{os.environ['RANK']}.err").write_text(str(err))
