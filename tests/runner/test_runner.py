from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from recaption.index import IndexStage
from recaption.readers import open_source
from recaption.runner import RayOptions, run_local, run_ray
from recaption.runner.base import OutputConflictError
from recaption.shards.layout import StageDir
from recaption.shards.manifest import read_failures
from tests.builders import image_bytes, sam_json, sam_member_pairs, truncated_jpeg, write_tar
from tests.runner.stages import FaultyIndexStage, TakeoverIndexStage


@pytest.fixture
def sam_tars(tmp_path: Path) -> Path:
    d = tmp_path / "sa1b"
    for t in range(4):
        members = sam_member_pairs(t * 10, 3)
        if t == 1:
            members += [("sa_90.jpg", truncated_jpeg()), ("sa_90.json", sam_json(90, 256, 192))]
            members += [("sa_91.jpg", b"text, not a jpeg"), ("sa_92.jpg", image_bytes(500, 100))]
        write_tar(d / f"sa_{t:06d}.tar", members)
    return d


def _parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}


def test_local_run_writes_shards_manifest_and_stats(sam_tars: Path, tmp_path: Path):
    out = tmp_path / "index"
    summary = run_local(IndexStage(source=open_source(str(sam_tars))), str(out), progress=False)
    assert summary.ok
    assert summary.total_shards == 4
    assert sorted(_parts(out)) == [f"part-{i:05d}.parquet" for i in range(4)]
    df = pd.read_parquet(out)  # the manifest and stats folders are invisible to dataset readers
    assert len(df) == 13
    wide = df[df.key == "sa_92"].iloc[0]
    assert (wide.width, wide.height, bool(wide.extreme_aspect)) == (500, 100, True)
    fails = read_failures(str(out))
    errors = fails[fails.severity == "error"]
    assert sorted(errors.key) == ["sa_90", "sa_91"]
    assert any("truncated" in r for r in errors.reason)
    assert any("not an image" in r for r in errors.reason)
    assert (fails[fails.key == "sa_92"].severity == "warning").all()
    stats = StageDir(str(out)).read_stats()
    assert [s["rows"] for s in stats] == [3, 4, 3, 3]
    assert stats[1]["errors"] == 2


def test_rerun_skips_done_and_redoes_the_rest_byte_identically(sam_tars: Path, tmp_path: Path):
    ref_out, out = tmp_path / "ref", tmp_path / "out"
    run_local(IndexStage(source=open_source(str(sam_tars))), str(ref_out), progress=False)
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "raise-2").touch()
    stage = FaultyIndexStage(source=open_source(str(sam_tars)), marker_dir=str(markers))
    first = run_local(stage, str(out), progress=False)
    assert list(first.failed) == [2]
    assert "injected failure" in first.failed[2]
    assert "part-00002.parquet" not in _parts(out)
    # what the failed shard wrote before failing is visible to no reader (tests/s3/test_commit.py
    # checks the same mid-write and after a crash at every step, on disk and on S3)
    assert "half" not in set(pd.read_parquet(out).key)
    assert 2 not in StageDir(str(out)).done_indices()
    assert not (out / "_progress" / "part-00002.json").exists()
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    second = run_local(stage, str(out), progress=False)
    assert second.ok
    assert second.skipped == 3
    assert [s["shard"] for s in second.done] == [2]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name in mtimes} == mtimes
    assert _parts(out) == _parts(ref_out)


def test_rerun_with_other_configuration_is_refused(sam_tars: Path, tmp_path: Path):
    out = tmp_path / "out"
    run_local(IndexStage(source=open_source(str(sam_tars))), str(out), progress=False)
    with pytest.raises(OutputConflictError) as e:
        run_local(IndexStage(source=open_source(str(sam_tars)), min_side=32), str(out), progress=False)
    assert "min_side: 8 → 32" in str(e.value)


def test_a_run_that_finished_nothing_may_be_redone_with_other_settings(sam_tars: Path, tmp_path: Path):
    """Every shard of the first try failed: no finished output can mix, so the corrected
    configuration replaces the recorded one instead of being refused."""
    out = tmp_path / "out"
    markers = tmp_path / "markers"
    markers.mkdir()
    for i in range(4):
        (markers / f"raise-{i}").touch()
    first = run_local(
        FaultyIndexStage(source=open_source(str(sam_tars)), marker_dir=str(markers)), str(out), progress=False
    )
    assert not first.done and len(first.failed) == 4
    second = run_local(IndexStage(source=open_source(str(sam_tars)), min_side=32), str(out), progress=False)
    assert second.ok and len(second.done) == 4
    assert json.loads((out / "_stage.json").read_text())["fingerprint"]["min_side"] == 32


def test_stale_temporary_files_are_cleaned(sam_tars: Path, tmp_path: Path):
    out = tmp_path / "out"
    run_local(IndexStage(source=open_source(str(sam_tars))), str(out), progress=False)
    (out / ".part-00001.parquet.tmp-deadbeef0000").write_bytes(b"junk")
    (out / "_stats" / "part-00001.json").unlink()  # as if killed between rename and stats
    summary = run_local(IndexStage(source=open_source(str(sam_tars))), str(out), progress=False)
    assert [s["shard"] for s in summary.done] == [1]
    assert not list(out.glob(".*tmp*"))


def test_stage_file_records_configuration(sam_tars: Path, tmp_path: Path):
    out = tmp_path / "out"
    run_local(IndexStage(source=open_source(str(sam_tars))), str(out), progress=False)
    rec = json.loads((out / "_stage.json").read_text())
    assert rec["stage"] == "index"
    assert rec["shards"] == 4
    assert rec["fingerprint"]["source"]["kind"] == "sam"


@pytest.mark.slow
def test_ray_two_actors_same_output_as_local(local_ray, sam_tars: Path, tmp_path: Path):
    ref_out, out = tmp_path / "ref", tmp_path / "ray"
    run_local(IndexStage(source=open_source(str(sam_tars))), str(ref_out), progress=False)
    summary = run_ray(
        IndexStage(source=open_source(str(sam_tars))), str(out), RayOptions(num_workers=2), progress=False
    )
    assert summary.ok
    # two actors were started; which of them took which shard depends on who was ready first
    assert summary.workers == 2
    # every shard done exactly once, in the actors' processes (not the driver's)
    workers = [s["worker"] for s in summary.done]
    assert sorted(s["shard"] for s in summary.done) == list(range(summary.total_shards))
    assert all(w.rsplit(":", 1)[1] != str(os.getpid()) for w in workers)
    assert _parts(out) == _parts(ref_out)


@pytest.mark.slow
def test_ray_worker_death_is_retried_and_nothing_is_lost(local_ray, sam_tars: Path, tmp_path: Path):
    ref_out, out = tmp_path / "ref", tmp_path / "ray"
    run_local(IndexStage(source=open_source(str(sam_tars))), str(ref_out), progress=False)
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "die-1").touch()
    (markers / "die-3").touch()
    stage = FaultyIndexStage(source=open_source(str(sam_tars)), marker_dir=str(markers))
    summary = run_ray(stage, str(out), RayOptions(num_workers=2), progress=False)
    assert summary.ok, summary.failed
    assert not list(markers.iterdir())  # both deaths happened
    assert _parts(out) == _parts(ref_out)
    assert sorted(s["shard"] for s in summary.done) == [0, 1, 2, 3]


@pytest.mark.slow
def test_ray_setup_error_fails_at_once(local_ray, sam_tars: Path, tmp_path: Path):
    class BadSetup(IndexStage):
        def setup(self) -> None:
            raise ValueError("model 'nope/nope' not found")

    with pytest.raises(ValueError, match="nope/nope"):
        run_ray(BadSetup(source=open_source(str(sam_tars))), str(tmp_path / "o"), RayOptions(num_workers=1))


@pytest.mark.slow
def test_ray_worker_commits_nothing_once_the_lease_was_taken_over(local_ray, sam_tars: Path, tmp_path: Path):
    """The worker (not the driver, whose heartbeat has not noticed) reads the lease before it
    commits shard 1 and drops the shard; the driver stops the run with the worker's error. Before,
    the worker committed shard 1 and the run went on into the folder another run owned."""
    from recaption.shards.lease import LeaseLostError
    from tests.shards.test_lease_lost import assert_not_committed

    out = tmp_path / "ray"
    stage = TakeoverIndexStage(source=open_source(str(sam_tars)), output=str(out), at=1)
    with pytest.raises(LeaseLostError, match="pid 4242 on node-9") as e:
        run_ray(stage, str(out), RayOptions(num_workers=1), progress=False)
    assert "Shard 1 was dropped, not committed" in str(e.value)
    assert sorted(_parts(out)) == ["part-00000.parquet"]
    for i in (1, 2, 3):
        assert_not_committed(out, i)
    assert json.loads((out / "_lease.json").read_text())["id"] == "new-holder"
