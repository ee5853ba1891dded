"""What a log file gets from a command whose stderr is not a terminal (``2> run.log``, ``ray job
logs``): recaption's own lines, not Hugging Face's tqdm bars, whose ``\\r`` updates made one long
line per model load ("Loading weights:   0%| ... \\rLoading weights: 100%| ...")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from recaption.hub import quiet_progress_bars
from tests.builders import image_bytes

REPO = Path(__file__).resolve().parents[2]


def test_a_logged_caption_run_has_no_tqdm_bars(tmp_path: Path, tiny_llava_dir: str):
    src = tmp_path / "images"
    src.mkdir()
    for i in range(2):
        (src / f"{i}.jpg").write_bytes(image_bytes(40, 32, seed=i))
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run(
        [sys.executable, "-m", "recaption", "caption", str(src), str(tmp_path / "out"),
         "--model", tiny_llava_dir, "--device", "cpu", "--max-new-tokens", "4", "--executor", "local"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "[caption] shard 0 done" in r.stderr  # recaption's own progress is there
    assert "Loading weights" not in r.stderr and "\r" not in r.stderr, r.stderr


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_a_terminal_or_an_explicit_setting_keeps_the_bars(monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert quiet_progress_bars(_Stream(tty=True)) is False
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # the user wants them, even in logs
    assert quiet_progress_bars(_Stream(tty=False)) is False
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"


def test_ray_worker_prefixes_are_plain_outside_a_terminal(monkeypatch):
    """Ray's driver wrapped each worker line's ``(StageWorker pid=…)`` prefix in colour codes, even
    in a log file; outside a terminal they are off, a terminal or the user's own setting keeps them."""
    from recaption.runner.ray import plain_worker_prefixes

    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    assert plain_worker_prefixes(_Stream(tty=True)) is False
    assert "RAY_COLOR_PREFIX" not in os.environ
    assert plain_worker_prefixes(_Stream(tty=False)) is True
    assert os.environ["RAY_COLOR_PREFIX"] == "0"
    monkeypatch.setenv("RAY_COLOR_PREFIX", "1")  # the user wants colours, even in logs
    assert plain_worker_prefixes(_Stream(tty=False)) is False
    assert os.environ["RAY_COLOR_PREFIX"] == "1"
