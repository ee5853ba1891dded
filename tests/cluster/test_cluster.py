"""A real two-node Ray cluster on loopback: jobs submitted with ``ray job submit``.

Slow (a cluster takes ~15 s to start): marked ``slow``; they run in CI.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.builders import image_bytes
from tests.cluster.harness import LocalCluster

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = LocalCluster(tmp_path_factory.mktemp("ray-cluster"))
    c.start()
    yield c
    c.stop()


def _images(d: Path, n: int) -> Path:
    d.mkdir(parents=True)
    for i in range(n):
        (d / f"img{i:03d}.jpg").write_bytes(image_bytes(64, 48, seed=i))
    return d


def _parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}


def test_killing_a_worker_node_mid_run_loses_nothing(cluster: LocalCluster, tmp_path: Path):
    src = _images(tmp_path / "imgs", 16)  # 8 shards of 2
    ref = tmp_path / "ref"
    out = tmp_path / "out"
    from recaption.index import IndexStage
    from recaption.readers import open_source
    from recaption.runner import run_local

    run_local(IndexStage(source=open_source(str(src), shard_size=2)), str(ref), progress=False)
    job = cluster.submit(
        [sys.executable, "tests/cluster/slow_index_job.py", str(src), str(out), "0.6"], ROOT, wait=False
    )
    # wait until a couple of shards are done, then kill the worker node
    t0 = time.time()
    while len(list((out / "_stats").glob("*.json"))) < 2 and time.time() - t0 < 120:
        time.sleep(0.3)
    assert len(list((out / "_stats").glob("*.json"))) >= 2, "job made no progress"
    cluster.kill_worker()
    log_file = sorted(cluster.tmp.glob("job-*.log"))[-1]
    assert job.wait(timeout=300) == 0, log_file.read_text()[-3000:]
    cluster.start_worker()  # back to two nodes for the next test
    log = log_file.read_text()
    summary = json.loads(log.split("SUMMARY ", 1)[1].splitlines()[0])
    assert summary["failed_shards"] == {}
    assert summary["retried_shards"], "the killed node's shard should have been redone"
    assert _parts(out) == _parts(ref)


def test_killing_the_driver_and_resubmitting_resumes(cluster: LocalCluster, tmp_path: Path):
    cluster.wait_nodes(2, 90)
    src = _images(tmp_path / "imgs", 16)
    ref, out = tmp_path / "ref", tmp_path / "out"
    from recaption.index import IndexStage
    from recaption.readers import open_source
    from recaption.runner import run_local

    run_local(IndexStage(source=open_source(str(src), shard_size=2)), str(ref), progress=False)
    entry = [sys.executable, "tests/cluster/slow_index_job.py", str(src), str(out), "0.6"]
    cluster.submit(entry, ROOT, wait=False, submission_id="recaption-driver-kill-1")
    t0 = time.time()
    while len(list((out / "_stats").glob("*.json"))) < 2 and time.time() - t0 < 120:
        time.sleep(0.3)
    cluster.stop_job("recaption-driver-kill-1")
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / "_stats").glob("*.json")}
    assert 2 <= len(done_before) < 8
    second = cluster.submit(entry, ROOT, wait=True, submission_id="recaption-driver-kill-2")
    assert second.returncode == 0
    log = sorted(cluster.tmp.glob("job-*.log"))[-1].read_text()
    summary = json.loads(log.split("SUMMARY ", 1)[1].splitlines()[0])
    assert summary["skipped_shards"] >= len(done_before)
    # finished shards were not redone, and the result equals an uninterrupted run
    assert {n: (out / "_stats" / n).stat().st_mtime_ns for n in done_before} == done_before
    assert _parts(out) == _parts(ref)
    assert not list(out.glob(".*tmp*"))
