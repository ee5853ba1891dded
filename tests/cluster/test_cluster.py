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


@pytest.fixture
def cluster(tmp_path: Path):
    c = LocalCluster(tmp_path / "ray-logs-root")
    c.tmp.mkdir()
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
    assert job.wait(timeout=300) == 0, (tmp_path / "ray-logs-root").joinpath("job-0.log").read_text()[-3000:]
    log = (tmp_path / "ray-logs-root" / "job-0.log").read_text()
    summary = json.loads(log.split("SUMMARY ", 1)[1].splitlines()[0].replace("'", '"'))
    assert summary["failed_shards"] == {}
    assert summary["retried_shards"], "the killed node's shard should have been redone"
    assert _parts(out) == _parts(ref)
