"""The commit protocol, on local disk and on a real S3 API: a reader never sees part of a shard,
a crash at any step leaves each shard whole or invisible, and a rerun leaves nothing behind.

Each test names the deliberate bug it catches (issue 15, "tests that can fail").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from recaption import io
from recaption.runner import run_local
from recaption.runner.base import prepare_output, run_shard
from recaption.shards.layout import StageDir
from recaption.shards.writer import ShardOutput
from tests.s3 import stages
from tests.s3.stages import BlobStage


@dataclass
class Target:
    root: str
    s3: Any = None

    def url(self, *parts: str) -> str:
        return io.join(self.root, *parts)

    def files(self, sub: str) -> list[str]:
        """Every file under ``sub``, relative to it (what a listing shows)."""
        base = self.url(sub)
        return sorted(u[len(base) :].lstrip("/") for u in io.walk_files(base)) if io.exists(base) else []


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "local":
        return Target(root=str(tmp_path / "t"))
    s3 = request.getfixturevalue("s3")
    return Target(root=s3.url("t"), s3=s3)


def _inputs(t: Target, n: int) -> tuple[str, ...]:
    urls = []
    for i in range(n):
        u = t.url("in", f"{i:05d}.bin")
        io.write_bytes_atomic(u, bytes([i]) * (10 + i))
        urls.append(u)
    return tuple(urls)


# -- io: one file ---------------------------------------------------------------------------------
def test_atomic_write_shows_the_old_file_or_the_whole_new_one(target: Target):
    """Catches: ``io``'s atomic write using the final name as its temporary one (a reader then
    sees the half-written file), and completing the upload of a write that failed."""
    url = target.url("a", "x.bin")
    io.write_bytes_atomic(url, b"old" * 10)
    big = b"n" * (6 * 2**20)  # over s3fs's 5 MiB block: a multipart upload on S3
    with io.atomic_open(url, "wb") as f:
        f.write(big[: 3 * 2**20])
        f.flush()
        assert io.read_bytes(url) == b"old" * 10  # mid-write: the old file, whole
        f.write(big[3 * 2**20 :])
    assert io.read_bytes(url) == big

    def fail_mid_write() -> None:
        with io.atomic_open(url, "wb") as f:
            f.write(b"half" * 2**20 * 2)
            f.flush()
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        fail_mid_write()
    assert io.read_bytes(url) == big  # the failed write left nothing
    assert target.files("a") == ["x.bin"]
    if target.s3 is not None:
        assert target.s3.uploads() == []  # aborted, not completed and not left behind


# -- one shard: what a reader sees mid-write ----------------------------------------------------
def test_a_reader_sees_nothing_of_a_shard_before_its_marker(target: Target):
    """Catches: writing a shard's data straight to its final name on local disk (every reader
    that lists the folder, ``pandas.read_parquet(OUTPUT)`` included, sees half a shard)."""
    out = target.url("out")
    stage = BlobStage(inputs=_inputs(target, 2), output=out, rows=3, nbytes=2 * 2**20, observe=True)
    stages.OBSERVED.clear()
    assert run_local(stage, out, progress=False).ok
    assert [i for i, _ in stages.OBSERVED] == [0, 1]
    for i, seen in stages.OBSERVED:
        assert seen == {
            "final_name_exists": False,
            "done": False,
            "listed_by_marker": False,
            "downstream_input": False,
        }, i
    assert StageDir(out).done_indices() == {0, 1}


# -- a crash between any two steps --------------------------------------------------------------
class Crash(BaseException):
    """A process death at this point (nothing after it runs: no abort, no clean-up)."""


WRITE_STEPS = ("rename", "write_bytes_atomic", "commit_output", "remove")


def _check_whole_or_invisible(out: str, index: int, rows: int) -> bool:
    """The invariant: a marker means every file it lists is there, whole; no marker, no reader
    believes any of the shard. Returns whether the shard is visible."""
    import pyarrow.parquet as pq

    sd = StageDir(out)
    if not io.exists(sd.stats(index)):
        from tests.s3.stages import observe

        assert not any(observe(out, index)[k] for k in ("done", "listed_by_marker", "downstream_input"))
        return False
    stats = json.loads(io.read_text(sd.stats(index)))
    total = 0
    for u in sd.committed_files(stats):
        with io.open_file(u, "rb") as f:
            total += pq.read_table(f).num_rows
    assert total == stats["rows"] == rows
    assert io.exists(sd.failures(index))
    assert io.exists(sd.side("sizes", index, "json"))
    return True


def test_a_crash_at_any_step_of_a_shard_leaves_it_whole_or_invisible(target: Target, monkeypatch):
    """Kill the writer before each filesystem step of a shard in turn (no abort runs, as after a
    kill -9), check the invariant, then resume and compare with an undisturbed run.

    Catches: writing the stats marker before the data (a crash between them leaves a marker whose
    files are missing or partial)."""
    inputs = _inputs(target, 1)
    stage = BlobStage(inputs=inputs, rows=3, nbytes=1000)
    ref = target.url("ref")
    assert run_local(stage, ref, progress=False).ok
    ref_bytes = io.read_bytes(StageDir(ref).data(0))
    shard = stage.shards()[0]
    monkeypatch.setattr(ShardOutput, "abort", lambda self: None)  # a dead process cleans nothing
    outcomes = []
    for k in range(40):
        out = target.url(f"crash-{k}")
        prepare_output(stage, out, stage.shards())
        calls = {"n": 0}
        originals = {name: getattr(io, name) for name in WRITE_STEPS}

        def counting(name: str, calls: dict = calls, originals: dict = originals, k: int = k) -> Any:
            def step(*a: Any, **kw: Any) -> Any:
                calls["n"] += 1
                if calls["n"] == k + 1:
                    raise Crash(name)
                return originals[name](*a, **kw)

            return step

        for name in WRITE_STEPS:
            monkeypatch.setattr(io, name, counting(name))
        crashed = None
        try:
            run_shard(stage, shard, out)
        except Crash as c:
            crashed = str(c)
        finally:
            for name, fn in originals.items():
                monkeypatch.setattr(io, name, fn)
        visible = _check_whole_or_invisible(out, 0, rows=3)
        outcomes.append((crashed, visible))
        # resume: the rerun sweeps what the dead writer left and (re)does the shard if needed
        summary = run_local(stage, out, progress=False)
        assert summary.ok
        assert io.read_bytes(StageDir(out).data(0)) == ref_bytes
        left = target.files(f"crash-{k}")
        assert left == sorted(
            [".huggingface.yaml", "_stage.json", "part-00000.parquet", "_failures/part-00000.parquet"]
            + ["_sizes/part-00000.json", "_stats/part-00000.json"]
        ), left
        if target.s3 is not None:
            assert target.s3.uploads() == []
        if crashed is None:
            break
    assert outcomes[-1] == (None, True)
    assert len(outcomes) >= 5  # progress marker, data, failures, side output, marker, clean-up
    assert any(v for c, v in outcomes if c is not None)  # a crash after the marker: still whole


def test_a_rerun_sweeps_every_folder_of_the_stage(target: Target):
    """Leftovers of a killed attempt in any folder of the stage (side outputs included) are swept."""
    stage = BlobStage(inputs=_inputs(target, 2), rows=1, nbytes=100)
    out = target.url("out")
    assert run_local(stage, out, progress=False).ok
    sd = StageDir(out)
    io.remove(sd.stats(1))  # shard 1 as if its writer died just before the marker
    junk = [io.tmp_name(sd.side("sizes", 1, "json")), sd.progress(1), io.tmp_name(sd.failures(0))]
    for u in junk:
        io.write_bytes_atomic(u, b"junk")
    summary = run_local(replace(stage), out, progress=False)
    assert [s["shard"] for s in summary.done] == [1]
    assert not [u for u in junk if io.exists(u)]
