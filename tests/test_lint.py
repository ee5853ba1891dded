"""The code stays ruff-clean (lint and format) and mypy-clean, as the team's standard asks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(exe).exists():
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return [exe]


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]])
def test_ruff(args: list[str]):
    out = subprocess.run(
        [*_ruff(), *args, "recaption", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy(tmp_path: Path):
    """``mypy recaption`` reports nothing (config in pyproject.toml). Cold, about a minute: nearly
    all of it is mypy reading diffusers, transformers and torch, which it must, to check our calls."""
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[dev]')")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), "recaption"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
