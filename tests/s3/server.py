"""A real S3 API on loopback: moto's server on 127.0.0.1 on a free port, s3fs pointed at it.

Everything that talks to it (this process, the ``recaption`` subprocesses, Ray workers) finds it
through ``AWS_ENDPOINT_URL_S3`` and dummy credentials in the environment; nothing leaves the host.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server, in a process of its own (so a test's busy GIL never stalls it)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto's S3 server did not start")
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


BLOCK = 5 * 2**20
S3_ENV = {
    "FSSPEC_S3": json.dumps({"default_block_size": BLOCK}),
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """A fresh bucket on the loopback server, this process's environment pointed at it."""
    import fsspec.config
    import s3fs

    # S3's smallest part (5 MiB) as the block size, so a few MiB make a multipart upload (the
    # default, 50 MiB, is what gigabyte feature shards meet).
    monkeypatch.setitem(fsspec.config.conf, "s3", {"default_block_size": BLOCK})
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    yield S3(fs=fs, bucket=bucket, endpoint=s3_endpoint)
    s3fs.S3FileSystem.clear_instance_cache()


class S3:
    """The test's handle on its bucket."""

    def __init__(self, fs: object, bucket: str, endpoint: str) -> None:
        self.fs = fs
        self.bucket = bucket
        self.endpoint = endpoint

    def url(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, *parts])

    def keys(self, prefix: str = "") -> list[str]:
        """Every object under ``prefix`` (listed afresh), relative to the bucket."""
        self.fs.invalidate_cache()  # type: ignore[attr-defined]
        root = f"{self.bucket}/{prefix}".rstrip("/")
        return sorted(k[len(self.bucket) + 1 :] for k in self.fs.find(root))  # type: ignore[attr-defined]

    def uploads(self) -> list[str]:
        """Keys of incomplete multipart uploads in the bucket."""
        out = self.fs.call_s3("list_multipart_uploads", Bucket=self.bucket)  # type: ignore[attr-defined]
        return sorted(u["Key"] for u in out.get("Uploads", []) or [])

    def put_dir(self, local: Path, prefix: str) -> str:
        for p in sorted(local.rglob("*")):
            if p.is_file():
                self.fs.pipe_file(f"{self.bucket}/{prefix}/{p.relative_to(local)}", p.read_bytes())  # type: ignore[attr-defined]
        return self.url(prefix)

    def get(self, key: str) -> bytes:
        return bytes(self.fs.cat_file(f"{self.bucket}/{key}"))  # type: ignore[attr-defined]

    def env(self) -> dict[str, str]:
        """The environment a subprocess needs to reach this server (with this worktree's code)."""
        return {
            **os.environ,
            **S3_ENV,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "PYTHONPATH": str(REPO),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
