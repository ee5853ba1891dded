"""A real multi-node Ray cluster on this machine (loopback), for tests.

Two ``ray start`` nodes (a head and a worker), each in its own process group so that one node can
be killed alone (``kill_worker``), with token authentication as Ray ≥ 2.59 expects. Never calls
``ray stop``, which would stop every Ray instance on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    def __init__(self, tmp: Path, head_cpus: int = 1, worker_cpus: int = 1) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.dashboard_port = free_port()
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
        }
        self.env.pop("RAY_ADDRESS", None)
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        # Each node's agents on ports of their own: Ray's fixed defaults (52365 for the job agent)
        # collide between two nodes on one host, and with any other Ray left running on it.
        ports = [
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]
        self.procs[name] = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", *ports, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killable alone
        )

    def start(self, timeout: float = 90) -> LocalCluster:
        self._start(
            "head",
            [
                "--head",
                f"--port={self.port}",
                f"--num-cpus={self.head_cpus}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                "--include-dashboard=true",
            ],
        )
        self.wait_nodes(1, timeout)
        self.start_worker()
        self.wait_nodes(2, timeout)
        self.wait_job_agent(timeout)
        return self

    def wait_job_agent(self, timeout: float) -> None:
        """Wait until the head's job agent takes submissions: nodes count as alive a little before
        it does, and a job submitted then fails with "No available agent to submit job"."""
        t0 = time.time()
        out = ""
        while time.time() - t0 < timeout:
            r = subprocess.run(
                [str(BIN / "ray"), "job", "submit", f"--address={self.dashboard}", "--", "true"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            out = r.stdout + r.stderr
            if r.returncode == 0:
                return
            time.sleep(2)
        raise RuntimeError(f"the Ray job agent did not take a job in {timeout}s: {out[-2000:]}")

    def start_worker(self) -> None:
        self._start("worker", [f"--address={self.address}", f"--num-cpus={self.worker_cpus}"])

    def _query(self, body: str) -> object:
        """Run ``body`` in a fresh driver connected to the cluster; the JSON its last line prints."""
        code = (
            "import json, ray\n"
            f"ray.init(address='{self.address}', log_to_driver=False, logging_level='ERROR')\n" + body
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        try:
            return json.loads(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None

    def alive_nodes(self) -> int:
        n = self._query("print(sum(1 for n in ray.nodes() if n['Alive']))\n")
        return int(n) if isinstance(n, int) else 0

    def worker_node_actors(self) -> list[str]:
        """Class names of the live actors on the worker (non-head) node."""
        names = self._query(
            "head = [n['NodeID'] for n in ray.nodes()\n"
            "        if n['Alive'] and 'node:__internal_head__' in n['Resources']]\n"
            "from ray.util.state import list_actors\n"
            "acts = list_actors(filters=[('state', '=', 'ALIVE')], limit=1000)\n"
            "print(json.dumps([a.class_name for a in acts if a.node_id not in head]))\n"
        )
        return list(names) if isinstance(names, list) else []

    def wait_nodes(self, n: int, timeout: float) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.alive_nodes() >= n:
                return
            time.sleep(1)
        logs = {p.name: p.read_text()[-2000:] for p in self.tmp.glob("*.log")}
        raise RuntimeError(f"Ray cluster did not reach {n} nodes in {timeout}s; logs: {logs}")

    def kill_worker(self) -> None:
        p = self.procs.pop("worker")
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()

    def submit(
        self, entrypoint: list[str], working_dir: Path, wait: bool = True, submission_id: str | None = None
    ) -> subprocess.Popen:
        cmd = [
            str(BIN / "ray"),
            "job",
            "submit",
            f"--address={self.dashboard}",
            f"--working-dir={working_dir}",
            *([f"--submission-id={submission_id}"] if submission_id else []),
            "--",
            *entrypoint,
        ]
        log = open(self.tmp / f"job-{len(list(self.tmp.glob('job-*')))}.log", "w")  # noqa: SIM115
        p = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True)
        if wait:
            p.wait(timeout=600)
        return p

    def stop_job(self, submission_id: str) -> None:
        """Stop a job's driver (what a pre-empted or killed driver looks like to the cluster)."""
        subprocess.run(
            [str(BIN / "ray"), "job", "stop", f"--address={self.dashboard}", submission_id],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def stop(self) -> None:
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        self.procs.clear()
