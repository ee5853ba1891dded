"""The exports hold their destination's lease as runs hold theirs (issue 10.1): a second
``export-captions`` into a folder being written is refused at once, exit 2, naming the holder, and
the first's output is whole; a destination inside a finished run folder still works."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from recaption.captions_export import export_captions
from recaption.readers.base import InputShard
from recaption.runner import run_local
from recaption.shards.lease import LEASE_FILE, LeaseInfo
from recaption.shards.writer import ShardOutput
from recaption.stage import Stage
from tests.builders import image_bytes

REPO = Path(__file__).resolve().parents[2]

# A recaption command whose every atomic write waits while the gate file exists (after writing):
# an export caught in the middle, for as long as the test needs.
GATED = """
import os, sys, time
from recaption import io
gate = sys.argv[1]
write = io.write_bytes_atomic
def gated(url, data):
    write(url, data)
    while os.path.exists(gate):
        time.sleep(0.02)
io.write_bytes_atomic = gated
sys.argv = ["recaption", *sys.argv[2:]]
from recaption.cli import main
main()
"""


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}


def tree(folder: Path) -> dict[str, bytes | str]:
    """Every file (its bytes) and link (its target) under ``folder``, by relative path."""
    out: dict[str, bytes | str] = {}
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            p = Path(root, name)
            out[str(p.relative_to(folder))] = os.readlink(p) if p.is_symlink() else p.read_bytes()
    return out


def second_is_refused_while_first_writes(
    first_args: list[str], second_args: list[str], dest: Path, gate: Path
):
    """Start the first command gated mid-write; run the second on the same destination: it must
    be refused at once (exit 2, naming the first) while the first goes on and then completes."""
    gate.touch()
    first = subprocess.Popen(
        [sys.executable, "-c", GATED, str(gate), *first_args],
        env=env(),
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not [p for p in dest.glob("*") if p.name != LEASE_FILE] and time.time() < deadline:
            assert first.poll() is None, first.stderr.read()  # type: ignore[union-attr]
            time.sleep(0.02)
        t0 = time.time()
        second = subprocess.run(
            [sys.executable, "-m", "recaption", *second_args],
            env=env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert second.returncode == 2, second.stderr
        assert "being written by another run" in second.stderr
        assert f"pid {first.pid} on {socket.gethostname()} ({first_args[0]})" in second.stderr
        assert "Traceback" not in second.stderr
        assert time.time() - t0 < 60
        assert first.poll() is None, "the first must still be running when the second is refused"
        gate.unlink()
        _, stderr = first.communicate(timeout=120)
        assert first.returncode == 0, stderr
    finally:
        gate.unlink(missing_ok=True)
        if first.poll() is None:
            first.kill()
            first.wait()


@dataclass
class CaptionsStage(Stage):
    """Caption shards without a model: ``dense_caption`` is made from the image's name."""

    name: ClassVar[str] = "caption"
    images: tuple[str, ...] = ()

    def schema(self) -> Any:
        import pyarrow as pa

        return pa.schema(
            [("key", pa.string()), ("dense_caption", pa.string()), ("error", pa.string())]
            + [("image_uri", pa.string()), ("image_member", pa.string())]
            + [("image_offset", pa.int64()), ("image_length", pa.int64())]
        )

    def fingerprint(self) -> dict[str, Any]:
        return {"images": list(self.images)}

    def shards(self) -> list[InputShard]:
        return [InputShard(index=i, uri=u, kind="image") for i, u in enumerate(self.images)]

    def process_shard(self, shard: InputShard, out: ShardOutput) -> dict[str, Any]:
        key = Path(shard.uri).stem
        row = {"key": key, "dense_caption": f"a photo named {key}", "error": None, "image_uri": shard.uri}
        out.write([{**row, "image_member": "", "image_offset": -1, "image_length": -1}])
        return {}


@pytest.fixture
def caption_run(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        (images / f"img{i}.jpg").write_bytes(image_bytes(40 + i, 32, seed=i))
    run = tmp_path / "run"
    stage = CaptionsStage(images=tuple(str(p) for p in sorted(images.glob("*.jpg"))))
    assert run_local(stage, str(run), progress=False).ok
    return run


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_a_second_export_captions_into_a_folder_being_written_is_refused(
    caption_run: Path, tmp_path: Path, fmt: str
):
    """Even with --overwrite (a rerun meant to replace a finished export): before, with no lease,
    it wrote the folder alongside the first, exit 0 (without it, it stopped at the first's first
    file: "exists; refusing to overwrite")."""
    ref, dest = tmp_path / "ref", tmp_path / "dest"
    export_captions(str(caption_run), str(ref), format=fmt)
    args = ["export-captions", str(caption_run), str(dest), "--format", fmt]
    second_is_refused_while_first_writes(args, [*args, "--overwrite"], dest, tmp_path / "gate")
    assert tree(dest) == tree(ref)  # the first's output whole, and its lease given back


def test_an_export_inside_a_finished_run_folder_works_and_inside_a_live_one_is_refused(
    caption_run: Path, monkeypatch: pytest.MonkeyPatch
):
    """`export-captions RUN RUN/captions-txt`: fine once no run writes RUN (its lease released, or
    stale); refused while one does, as a run into RUN/inner would be."""
    from typer.testing import CliRunner

    from recaption.cli import app

    def export(dest: Path) -> Any:
        return CliRunner().invoke(
            app, ["export-captions", str(caption_run), str(dest)], catch_exceptions=False
        )

    assert not (caption_run / LEASE_FILE).exists()
    r = export(caption_run / "captions-txt")
    assert r.exit_code == 0, r.output
    assert len(list((caption_run / "captions-txt").glob("*.txt"))) == 6
    now = time.time()
    live = LeaseInfo(id="run", host="node-5", pid=77, started=now, heartbeat=now, command="run")
    (caption_run / LEASE_FILE).write_bytes(live.to_json())
    r = export(caption_run / "captions-again")
    assert r.exit_code == 2
    assert "is inside" in r.output and "pid 77 on node-5 (run)" in r.output
    assert not (caption_run / "captions-again" / LEASE_FILE).exists()
    stale = LeaseInfo(id="run", host="node-5", pid=77, started=now - 1e4, heartbeat=now - 1e4, command="run")
    (caption_run / LEASE_FILE).write_bytes(stale.to_json())  # a run killed long ago
    r = export(caption_run / "captions-later")
    assert r.exit_code == 0, r.output
