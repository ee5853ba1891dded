"""The embedded Ray (issue 10.6): it listens on loopback only, and dies with a killed driver."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")
pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]

# A driver that starts the embedded Ray as `recaption` does, runs a task on a worker, reports every
# listening socket of its descendants (GCS, raylet, workers, agents, metrics exporters), then waits.
DRIVER = """
import json, os, sys, time
import psutil, ray
from recaption.runner.ray import RayOptions, ensure_ray
import recaption.runner.ray as R
import subprocess
bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # not Ray's
ensure_ray(RayOptions(num_cpus=1))
@ray.remote
def pid():
    return os.getpid()
ray.get(pid.remote())
time.sleep(2)  # the agents open their ports shortly after start
me = psutil.Process()
kids = {p.pid: p for p in me.children(recursive=True) if p.pid != bystander.pid}
if R._REAPER["proc"] is not None:
    kids.pop(R._REAPER["proc"].pid, None)
listening = []
for c in psutil.net_connections("inet"):
    if c.status == psutil.CONN_LISTEN and (c.pid in kids or c.pid == me.pid):
        name = kids[c.pid].name() if c.pid in kids else "driver"
        listening.append([c.laddr.ip, c.laddr.port, name])
print(json.dumps({"listening": listening, "pids": sorted(kids), "bystander": bystander.pid}), flush=True)
time.sleep(600)
"""


def _loopback(ip: str) -> bool:
    return ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") or ip.startswith("127.")


def test_embedded_ray_listens_on_loopback_only_and_dies_with_a_killed_driver():
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER],
        env={**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"},
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    report: dict = {}
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        report = json.loads(line)
        pids = report["pids"]
        assert report["listening"], "no listening socket found: the check would prove nothing"
        outside = [entry for entry in report["listening"] if not _loopback(entry[0])]
        assert not outside, f"listening beyond loopback: {outside}"
        os.kill(proc.pid, signal.SIGKILL)  # a killed driver: no clean-up of its own runs
        proc.wait(timeout=30)
        deadline = time.time() + 20
        alive: list[int] = []
        while time.time() < deadline:
            alive = [
                p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
            ]
            if not alive:
                break
            time.sleep(0.5)
        assert not alive, f"embedded Ray processes outlived the killed driver: {alive}"
        # only Ray's processes: another child of the driver (a server a test started) is left alone
        assert psutil.pid_exists(report["bystander"])
        assert psutil.Process(report["bystander"]).status() != psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in [*pids, *([report["bystander"]] if report else [])]:  # never leave them behind
            with contextlib.suppress(psutil.Error):
                psutil.Process(p).kill()
