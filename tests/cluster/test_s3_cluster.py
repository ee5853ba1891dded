"""Issue 15's "done when": a run on a two-node loopback Ray cluster with input and output on a
local S3 server gives the same shards, nouns report and summary totals as the same run on one
machine on disk; a killed driver's run, resumed, leaves no object or upload behind. Slow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.harness import LocalCluster
from tests.pipeline.conftest import make_webdataset, tiny_config

pytest.importorskip("s3fs", reason="needs s3fs (pip install -e '.[dev]')")
pytest.importorskip("moto.server", reason="needs moto[server] (pip install -e '.[dev]')")

from tests.s3.server import REPO, S3, s3, s3_endpoint  # noqa: F401  (fixtures)
from tests.s3.test_pipeline_s3 import _stable, _stats_meaning, _tree

pytestmark = pytest.mark.slow


def test_a_two_node_cluster_on_s3_equals_one_machine_on_disk(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    tiny_llava_dir: str,
    tiny_t5_dir: str,
    tiny_vae_model_dir: str,
):
    import torch

    from recaption.pipeline.config import load_config
    from recaption.pipeline.run import run_pipeline

    store: S3 = request.getfixturevalue("s3")
    models = {"llava": tiny_llava_dir, "t5": tiny_t5_dir, "vae": tiny_vae_model_dir}
    wds = make_webdataset(tmp_path / "wds", n=12, per_shard=3)
    src = store.put_dir(wds, "src")

    # one machine, on disk (torch on 1 thread, as a Ray worker of under 2 CPUs runs)
    local_out = str(tmp_path / "local")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_pipeline(load_config(tiny_config(src, local_out, models)), progress=False).ok()
    finally:
        torch.set_num_threads(threads)

    (tmp_path / "cluster").mkdir()
    cluster = LocalCluster(tmp_path / "cluster", head_cpus=2, worker_cpus=2)
    cluster.env.update({k: v for k, v in store.env().items() if k.startswith(("AWS_", "FSSPEC_"))})
    cluster.start()
    try:
        cfg = tiny_config(src, store.url("run"), models, executor="ray")
        cfg.pop("ray")
        cfg["caption"]["workers"] = 2  # one per node
        path = tmp_path / "cluster.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = {**store.env(), "RAY_ADDRESS": cluster.address, "RAY_AUTH_TOKEN": cluster.env["RAY_AUTH_TOKEN"]}
        env["RAY_AUTH_MODE"] = "token"
        cmd = [sys.executable, "-m", "recaption", "run", str(path)]
        # a first driver, killed mid-run (kill -9: no clean-up at all) ...
        first = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while time.time() < deadline and not store.keys("run/captions/_stats"):
            time.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        # ... then the same command again resumes it
        r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
        assert r.returncode == 0, r.stderr[-4000:]
        workers = {
            json.loads(store.get(k)).get("worker", "").split(":")[0]
            for k in store.keys("run/captions/_stats")
        }
        assert workers and all(workers)
    finally:
        cluster.stop()

    ref, got = _tree(local_out), _tree(store.url("run"))
    assert sorted(_stable(got)) == sorted(_stable(ref))
    assert [k for k in _stable(ref) if ref[k] != got[k]] == []
    assert _stats_meaning(got) == _stats_meaning(ref)
    assert json.loads(got["summary.json"])["totals"] == json.loads(ref["summary.json"])["totals"]
    assert store.uploads() == []
    assert not [k for k in got if "/_progress/" in f"/{k}" or ("/." in f"/{k}" and ".tmp-" in k)]
