"""A run that lost its lease commits nothing more (issue 10.1): each shard verifies the lease on
record before it commits, and the run stops naming the run that holds it now."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recaption.index import IndexStage
from recaption.readers import open_source
from recaption.runner import run_local
from recaption.shards.lease import LEASE_FILE, Lease, LeaseLostError
from tests.runner.stages import TakeoverIndexStage

REPO = Path(__file__).resolve().parents[2]

# `recaption index` with every shard taking `seconds` (long enough for a takeover to land mid-shard).
SLOW_CLI = """
import sys, time
import recaption.index as ix
seconds = float(sys.argv[3])
original = ix.IndexStage.process_shard
def slow(self, shard, out):
    time.sleep(seconds)
    return original(self, shard, out)
ix.IndexStage.process_shard = slow
sys.argv = ["recaption", "index", sys.argv[1], sys.argv[2]]
from recaption.cli import main
main()
"""


def _parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}


def assert_not_committed(out: Path, index: int) -> None:
    """Nothing of shard ``index`` is anywhere: no data, marker, manifest, progress, temporary file."""
    name = f"part-{index:05d}"
    assert not (out / f"{name}.parquet").exists()
    assert not (out / "_stats" / f"{name}.json").exists()
    assert not (out / "_failures" / f"{name}.parquet").exists()
    assert not (out / "_progress" / f"{name}.json").exists()
    assert not [p.name for p in out.rglob("*") if ".tmp-" in p.name]


def test_a_run_whose_lease_is_taken_over_mid_shard_stops_with_exit_2_and_commits_nothing_more(
    sam_tars: Path, tmp_path: Path
):
    """The real thing: `recaption index` in a process of its own; while its shard 1 runs, this
    test takes the lease over through the normal stale-lease path (its heartbeat is older than our
    timeout, as for a paused run). Before: the first run committed shard 1 and every shard after it
    into the folder it no longer owned, and exited 0."""
    out, ref = tmp_path / "out", tmp_path / "ref"
    run_local(IndexStage(source=open_source(str(sam_tars))), str(ref), progress=False)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    first = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, str(sam_tars), str(out), "1.5"],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    taker = Lease(str(out), timeout=0.5)  # the first run's heartbeat (every 30 s) is older than this
    try:
        deadline = time.time() + 60
        while not (out / "_progress" / "part-00001.json").exists() and time.time() < deadline:
            assert first.poll() is None, first.stderr.read()  # type: ignore[union-attr]
            time.sleep(0.02)
        taker.acquire()
        assert json.loads((out / LEASE_FILE).read_text())["id"] == taker.info.id
        _, stderr = first.communicate(timeout=120)
        assert first.returncode == 2, stderr
        assert f"lost its lease to another run, pid {os.getpid()} on {socket.gethostname()}" in stderr
        assert "Shard 1 was dropped, not committed" in stderr
        assert "Traceback" not in stderr
        assert sorted(_parts(out)) == ["part-00000.parquet"]
        for i in (1, 2, 3):
            assert_not_committed(out, i)
        assert json.loads((out / LEASE_FILE).read_text())["id"] == taker.info.id  # not released by it
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        taker.release()
    # the folder is as a killed run leaves it: a rerun completes it, identical to an undisturbed run
    assert run_local(IndexStage(source=open_source(str(sam_tars))), str(out), progress=False).ok
    assert _parts(out) == _parts(ref)


def test_the_shard_in_hand_is_dropped_when_the_lease_was_taken_over_during_it(sam_tars: Path, tmp_path: Path):
    out = tmp_path / "out"
    stage = TakeoverIndexStage(source=open_source(str(sam_tars)), output=str(out), at=1)
    with pytest.raises(LeaseLostError, match="pid 4242 on node-9") as e:
        run_local(stage, str(out), progress=False)
    assert "Shard 1 was dropped, not committed" in str(e.value)
    assert sorted(_parts(out)) == ["part-00000.parquet"]
    for i in (1, 2, 3):
        assert_not_committed(out, i)
    assert json.loads((out / LEASE_FILE).read_text())["id"] == "new-holder"  # the new holder's, kept


def test_a_shard_that_fails_after_a_takeover_stops_the_run(sam_tars: Path, tmp_path: Path):
    """A shard failing once the lease is lost (the new holder's sweep removed its temporary file,
    or aborted its upload) is not a shard's failure to move on from: the run stops there. Before,
    it recorded the failure and went on committing shards 2 and 3."""
    out = tmp_path / "out"
    stage = TakeoverIndexStage(source=open_source(str(sam_tars)), output=str(out), at=1, then_raise=True)
    with pytest.raises(LeaseLostError, match="pid 4242 on node-9") as e:
        run_local(stage, str(out), progress=False)
    assert "Shard 1 was dropped (RuntimeError: injected failure in shard 1)" in str(e.value)
    for i in (1, 2, 3):
        assert_not_committed(out, i)


def test_a_heartbeat_that_found_the_lease_taken_stops_the_run_at_the_next_shard(
    sam_tars: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The heartbeat thread's finding stops the run before the next shard starts, naming the
    holder, without a read of its own."""
    out = tmp_path / "out"
    started: list[int] = []

    class Watched(IndexStage):
        def process_shard(self, shard, out_):  # type: ignore[no-untyped-def]
            started.append(shard.index)
            stats = super().process_shard(shard, out_)
            if shard.index == 0:
                from recaption.shards.lease import held

                lease = held(str(out))
                assert lease is not None
                # as the heartbeat thread records a takeover it found
                lease.lost_to = dataclasses.replace(lease.info, id="other", host="n3")
                lease.lost = True
            return stats

    with pytest.raises(LeaseLostError, match=r"lost its lease to another run, pid \d+ on n3"):
        run_local(Watched(source=open_source(str(sam_tars))), str(out), progress=False)
    assert started == [0]
