"""Run by ``torchrun`` in ``test_distributed.py``: train from a JSON config, save this rank's
weights to ``<output>/rank<r>.pt``."""

import json
import os
import sys
from pathlib import Path

import torch

from nat.tasks.classification import TrainConfig, train

if __name__ == "__main__":
    config = TrainConfig.from_dict(json.loads(Path(sys.argv[1]).read_text()))
    result = train(config, progress=False)
    torch.save(result.model.state_dict(), result.output / f"rank{os.environ['RANK']}.pt")
