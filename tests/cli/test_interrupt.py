"""SIGTERM (a pre-empted node, a stopped job) stops a run as Ctrl-C does: a clear message, exit
130, no temporary files, and a rerun that resumes from the finished shards."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.builders import image_bytes


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_sigterm_stops_cleanly_and_the_rerun_resumes(tmp_path: Path, executor: str):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(400):
        (src / f"{i:04d}.jpg").write_bytes(image_bytes(64, 48, seed=i))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "recaption", "index", str(src), str(out), "--shard-size", "1"]
    cmd += ["--executor", executor, "--json"] + (["--workers", "1"] if executor == "ray" else [])
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not list((out / "_stats").glob("*.json")) and time.time() - t0 < 120 and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be interrupted"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    assert "run the same command again to resume" in err
    assert "SIGTERM received" not in err  # not Ray's crash dump
    done = len(list((out / "_stats").glob("*.json")))
    assert 0 < done < 400

    def leftovers() -> list[Path]:
        return [f for f in out.rglob("*") if ".tmp-" in f.name]

    if executor == "local":  # the shard in hand is aborted in this process
        assert not leftovers()
    # (a Ray actor killed mid-shard cannot clean up after itself: the rerun removes what it left)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    summary = json.loads(r.stdout[r.stdout.index("{") :])
    assert summary["skipped_shards"] == done
    assert summary["done_shards"] == 400 - done
    assert not leftovers()
