"""The pipeline on a real two-node Ray cluster (loopback), submitted with ``ray job submit``.

An uninterrupted run is the reference. Killing the worker node mid-run must still complete the
job with nothing lost; stopping the driver and submitting again must resume. In both cases the
final shards must equal the reference's. Slow (a cluster plus three runs): marked ``slow``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.harness import LocalCluster
from tests.pipeline.conftest import make_webdataset, tiny_config

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("captions", "nouns", "features")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = LocalCluster(tmp_path_factory.mktemp("ray-cluster"), head_cpus=2, worker_cpus=2)
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def job_config(
    tmp_path_factory: pytest.TempPathFactory, tiny_llava_dir: str, tiny_t5_dir: str, tiny_vae_model_dir: str
):
    src = make_webdataset(tmp_path_factory.mktemp("src") / "wds", n=60, per_shard=4)
    models = {"llava": tiny_llava_dir, "t5": tiny_t5_dir, "vae": tiny_vae_model_dir}
    folder = tmp_path_factory.mktemp("jobs")

    def make(name: str) -> tuple[Path, Path]:
        out = folder / name
        cfg = tiny_config(src, out, models, executor="ray")
        cfg["caption"].update(max_new_tokens=160, min_new_tokens=160, batch_size=4, workers=2)
        cfg.pop("ray")  # join the cluster the job runs in (RAY_ADDRESS)
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path, out

    return make


def _entry(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "recaption", "run", str(cfg), "--json"]


def _summary(log: Path) -> dict:
    text = log.read_text()
    return json.loads(text[text.index('{\n  "output"') :].split("\n}\n", 1)[0] + "\n}")


def _parts(out: Path) -> dict[str, bytes]:
    return {f"{s}/{p.name}": p.read_bytes() for s in STAGES for p in sorted((out / s).glob("part-*.parquet"))}


def _wait_for(out: Path, stage: str, n: int, timeout: float = 180) -> None:
    t0 = time.time()
    while len(list((out / stage / "_stats").glob("*.json"))) < n and time.time() - t0 < timeout:
        time.sleep(0.2)


@pytest.fixture(scope="module")
def reference(cluster: LocalCluster, job_config) -> Path:
    cfg, out = job_config("reference")
    job = cluster.submit(_entry(cfg), ROOT, wait=True)
    log = sorted(cluster.tmp.glob("job-*.log"))[-1]
    assert job.returncode == 0, log.read_text()[-4000:]
    s = _summary(log)
    assert s["images"] == 60
    assert all(not st["failed_shards"] for st in s["stages"].values())
    return out


def test_reference_run_is_complete(reference: Path):
    stats = [json.loads(p.read_text()) for p in (reference / "captions" / "_stats").glob("*.json")]
    assert len(stats) == 15
    assert all(s["worker"] for s in stats)


def test_killing_a_worker_node_mid_run_loses_nothing(cluster: LocalCluster, job_config, reference: Path):
    cfg, out = job_config("node-killed")
    job = cluster.submit(_entry(cfg), ROOT, wait=False)
    # kill the worker node once a worker of the run lives there and captioning is under way
    t0 = time.time()
    on_node: list[str] = []
    while time.time() - t0 < 180 and not on_node:
        on_node = [a for a in cluster.worker_node_actors() if a == "StageWorker"]
        time.sleep(0.5)
    assert on_node, "no worker of the run was placed on the worker node"
    _wait_for(out, "captions", 2)
    assert len(list((out / "features" / "_stats").glob("*.json"))) < 15, "the run ended before the kill"
    cluster.kill_worker()
    log = sorted(cluster.tmp.glob("job-*.log"))[-1]
    assert job.wait(timeout=600) == 0, log.read_text()[-4000:]
    cluster.start_worker()  # two nodes again for the next test
    s = _summary(log)
    assert all(not st["failed_shards"] for st in s["stages"].values())
    assert _parts(out) == _parts(reference)


def test_stopping_the_driver_and_resubmitting_resumes(cluster: LocalCluster, job_config, reference: Path):
    cluster.wait_nodes(2, 120)
    cfg, out = job_config("driver-killed")
    cluster.submit(_entry(cfg), ROOT, wait=False, submission_id="recaption-driver-stop-1")
    _wait_for(out, "captions", 3)
    cluster.stop_job("recaption-driver-stop-1")
    time.sleep(2)
    done_before = {
        f"{s}/{p.name}": p.stat().st_mtime_ns for s in STAGES for p in (out / s / "_stats").glob("*.json")
    }
    assert 3 <= len(done_before) < 45
    second = cluster.submit(_entry(cfg), ROOT, wait=True, submission_id="recaption-driver-stop-2")
    log = sorted(cluster.tmp.glob("job-*.log"))[-1]
    assert second.returncode == 0, log.read_text()[-4000:]
    s = _summary(log)
    assert sum(st["skipped_shards"] for st in s["stages"].values()) >= len(done_before)
    after = {
        f"{st}/{p.name}": p.stat().st_mtime_ns for st in STAGES for p in (out / st / "_stats").glob("*.json")
    }
    assert {k: after[k] for k in done_before} == done_before  # finished shards were not redone
    assert _parts(out) == _parts(reference)
    assert not [p for s in STAGES for p in (out / s).glob(".*tmp*")]
