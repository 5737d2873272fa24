"""The package installed like any package: its wheel in a fresh virtual environment, run from
outside the checkout, with no sight of the checkout's ``src/`` or its editable install.

The fresh environment borrows this one's dependencies (torch, timm, ...) through a ``.pth`` line
naming this environment's site-packages: a ``.pth`` line puts a directory on ``sys.path`` without
running that directory's own ``.pth`` files, so the editable install of ``nat`` stays invisible.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(the fresh environment's bin directory, a working directory outside the checkout, env)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so")
    shutil.copytree(ROOT / "src", source / "src", ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist")]
    subprocess.run([*build, str(source)], check=True, cwd=tmp, timeout=300)
    (wheel,) = (tmp / "dist").glob("nat-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "borrowed_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, cwd=tmp, timeout=300)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NAT_CONFIG_DIR")}
    work = tmp / "work"
    work.mkdir()
    return venv / "bin", work, env


def _run(installed, *argv: str) -> subprocess.CompletedProcess:
    bin_dir, work, env = installed
    proc = subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_nat_is_imported_from_the_fresh_environment(installed):
    found = _run(installed, "python", "-c", "import nat; print(nat.__file__)").stdout.strip()
    assert Path(found).is_relative_to(installed[0].parent) and not Path(found).is_relative_to(ROOT)


def test_nat_train_finds_its_recipe_and_trains(installed):
    proc = _run(
        installed, "nat", "train", "--epochs", "1", "--output", "run", "--no-progress", "--json"
    )
    assert json.loads(proc.stdout)["epochs"] == 1
    assert (installed[1] / "run" / "last.pt").is_file()
    assert "No CUDA runtime" not in proc.stderr


def test_nat_models_lists_a_variant_without_warnings(installed):
    proc = _run(installed, "nat", "models", "nat_mini")
    assert proc.stdout.splitlines()[2].startswith("nat_mini ")
    assert "No CUDA runtime" not in proc.stderr
