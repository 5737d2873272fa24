"""Run by ``torchrun`` in ``test_train.py``: one epoch of one step per process (gloo, CPU)."""

import sys
from pathlib import Path

from tiny import TINY_SETTINGS

from nat.tasks.detection import DetectConfig, train

if __name__ == "__main__":
    root = Path(sys.argv[1])
    settings = {**TINY_SETTINGS, "synthetic_images": [4, 2], "device": "cpu"}
    train(DetectConfig(**settings, output=str(root / "run")), progress=False)
