"""The Triton backend without a GPU: its kernels in Triton's interpreter, in a child process.

``triton_cases.py`` holds the cases; they need ``TRITON_INTERPRET=1`` from the start of the
process (see its docstring), so this test runs them in a fresh pytest with the variable set.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("triton_cases.py")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_triton_kernels_match_the_reference_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [*command, str(CASES)],
        env=env,
        capture_output=True,
        text=True,
        cwd=CASES.parents[2],
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
