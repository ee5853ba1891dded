"""Object storage for real (issue 15): leases, kills, status and listings against moto's S3 server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from recaption import io
from recaption.runner import run_local
from recaption.shards.layout import StageDir
from recaption.shards.lease import Lease, LeaseHeldError, OutputNotWritableError
from recaption.status import run_status
from tests.s3.server import REPO, S3
from tests.s3.stages import BlobStage


def _blob_inputs(s3: S3, n: int) -> tuple[str, ...]:
    urls = []
    for i in range(n):
        u = s3.url("in", f"{i:05d}.bin")
        io.write_bytes_atomic(u, bytes([i]) * 16)
        urls.append(u)
    return tuple(urls)


_DRIVER = (
    "import sys, json; from recaption.runner import run_local; from tests.s3.stages import BlobStage;"
    "kw = json.loads(sys.argv[1]); kw['inputs'] = tuple(kw['inputs']);"
    "s = run_local(BlobStage(**kw), kw['output'], progress=False); sys.exit(0 if s.ok else 1)"
)


def _start(s3: S3, **kw: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _DRIVER, json.dumps(kw)], env=s3.env(), cwd=REPO)


def _wait(cond, timeout: float = 60.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_kill_9_mid_upload_then_resume_leaves_nothing_behind(s3: S3, tmp_path: Path):
    """A writer killed during a multipart upload leaves an incomplete upload no listing shows; the
    rerun aborts it, redoes the shard, and leaves no object or upload that is not output."""
    inputs = _blob_inputs(s3, 2)
    out = s3.url("out")
    stall = tmp_path / "stall"
    stall.touch()
    kw = {"inputs": list(inputs), "output": out, "rows": 4, "nbytes": 3 * 2**20}
    proc = _start(s3, **kw, stall_file=str(stall))
    try:
        _wait(lambda: s3.uploads() != [], what="a multipart upload in flight")
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert s3.uploads() == ["out/part-00000.parquet"]  # invisible, and billed, until aborted
    assert not [k for k in s3.keys("out") if k.startswith("out/part-")]  # never completed
    summary = run_local(BlobStage(inputs=inputs, output=out, rows=4, nbytes=3 * 2**20), out, progress=False)
    assert summary.ok and len(summary.done) == 2
    assert s3.uploads() == []
    assert s3.keys("out") == sorted(
        ["out/.huggingface.yaml", "out/_stage.json"]
        + [
            f"out/{d}/part-0000{i}.{e}"
            for i in (0, 1)
            for d, e in (("_failures", "parquet"), ("_sizes", "json"))
        ]
        + [f"out/_stats/part-0000{i}.json" for i in (0, 1)]
        + [f"out/part-0000{i}.parquet" for i in (0, 1)]
    )
    ref = tmp_path / "ref"
    local_inputs = []
    for i in range(2):
        (tmp_path / f"{i:05d}.bin").write_bytes(bytes([i]) * 16)
        local_inputs.append(str(tmp_path / f"{i:05d}.bin"))
    run_local(BlobStage(inputs=tuple(local_inputs), rows=4, nbytes=3 * 2**20), str(ref), progress=False)
    for i in (0, 1):
        assert s3.get(f"out/part-0000{i}.parquet") == (ref / f"part-0000{i}.parquet").read_bytes()


def test_status_sees_work_in_progress_on_s3(s3: S3, tmp_path: Path):
    inputs = _blob_inputs(s3, 2)
    out = s3.url("out")
    stall = tmp_path / "stall"
    stall.touch()
    proc = _start(s3, inputs=list(inputs), output=out, rows=1, nbytes=100, stall_file=str(stall))
    try:
        _wait(lambda: io.exists(StageDir(out).stage_file), what="the run to start")
        _wait(lambda: run_status(out)["stages"][0]["shards_in_progress"] == [0], what="shard 0 in progress")
        st = run_status(out)["stages"][0]
        assert st["running"] is True and st["lease"]["live"] is True
        assert st["shards_done"] == 0
        stall.unlink()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    st = run_status(out)["stages"][0]
    assert (st["shards_done"], st["shards_in_progress"], st["running"], st["complete"]) == (
        2,
        [],
        False,
        True,
    )


def test_the_lease_is_exclusive_on_s3(s3: S3):
    """Conditional PUT (If-None-Match: *): of racing takers exactly one wins."""
    results: list[str] = []
    barrier = threading.Barrier(6)

    def take() -> None:
        lease = Lease(s3.url("leased"))
        barrier.wait()
        try:
            lease.acquire()
            results.append("won")
        except LeaseHeldError:
            results.append("refused")

    threads = [threading.Thread(target=take) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["refused"] * 5 + ["won"]


def test_a_second_run_on_an_s3_folder_is_refused(s3: S3, tmp_path: Path):
    inputs = _blob_inputs(s3, 2)
    out = s3.url("out")
    stall = tmp_path / "stall"
    stall.touch()
    proc = _start(s3, inputs=list(inputs), output=out, rows=1, nbytes=100, stall_file=str(stall))
    try:
        _wait(lambda: io.exists(io.join(out, "_progress", "part-00000.json")), what="the first run")
        with pytest.raises(LeaseHeldError, match=f"pid {proc.pid}"):
            run_local(BlobStage(inputs=inputs, output=out, rows=1, nbytes=100), out, progress=False)
        stall.unlink()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert StageDir(out).done_indices() == {0, 1}


def test_a_run_on_an_s3_folder_around_a_live_runs_folder_is_refused(s3: S3, tmp_path: Path):
    """A run on `out` while another writes `out/inner`: its sweep would abort the other's multipart
    uploads and delete its unmarked objects; it is refused instead, and the other completes."""
    inputs = _blob_inputs(s3, 2)
    inner, out = s3.url("nest", "inner"), s3.url("nest")
    stall = tmp_path / "stall"
    stall.touch()
    proc = _start(s3, inputs=list(inputs), output=inner, rows=1, nbytes=100, stall_file=str(stall))
    try:
        _wait(lambda: io.exists(io.join(inner, "_progress", "part-00000.json")), what="the first run")
        with pytest.raises(LeaseHeldError, match=f"contains {inner}, which is being written.*pid {proc.pid}"):
            run_local(BlobStage(inputs=inputs, output=out, rows=1, nbytes=100), out, progress=False)
        assert not io.exists(io.join(out, "_lease.json"))
        stall.unlink()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert StageDir(inner).done_indices() == {0, 1}


def test_a_missing_output_bucket_is_refused_not_created(s3: S3, monkeypatch: pytest.MonkeyPatch):
    inputs = _blob_inputs(s3, 1)
    out = "s3://typo-bkt-recaption/out"
    with pytest.raises(OutputNotWritableError, match=r"no such bucket.*RECAPTION_CREATE_BUCKET=1"):
        run_local(BlobStage(inputs=inputs), out, progress=False)
    s3.fs.invalidate_cache()  # type: ignore[attr-defined]
    assert not s3.fs.exists("typo-bkt-recaption")  # type: ignore[attr-defined]
    monkeypatch.setenv("RECAPTION_CREATE_BUCKET", "1")
    assert run_local(BlobStage(inputs=inputs), out, progress=False).ok


def test_listings_are_fresh_after_another_process_writes(s3: S3):
    """The driver's listings must not be the ones it cached before its workers wrote (15.1)."""
    folder = s3.url("listed")
    io.write_bytes_atomic(io.join(folder, "a.json"), b"{}")
    assert [io.basename(u) for u in io.listdir(folder)] == ["a.json"]
    assert not io.exists(io.join(folder, "b.json"))
    code = (
        "import sys; from recaption import io; io.write_bytes_atomic(sys.argv[1], b'{}');"
        "io.write_bytes_atomic(sys.argv[2], b'{}')"
    )
    subprocess.run(
        [sys.executable, "-c", code, io.join(folder, "b.json"), io.join(folder, "_sub", "c.json")],
        env=s3.env(),
        cwd=REPO,
        check=True,
        timeout=60,
    )
    assert [io.basename(u) for u in io.listdir(folder)] == ["_sub", "a.json", "b.json"]
    assert io.exists(io.join(folder, "b.json"))
    assert [io.basename(u) for u in io.listdir(io.join(folder, "_sub"))] == ["c.json"]


def test_an_edited_caption_sidecar_on_s3_changes_its_shards_identity(s3: S3):
    """Loose images with .txt sidecars on S3: the sidecar is part of the shard's identity (found in
    the folder's one listing; absent sidecars cost no request), and an edit is noticed."""
    from recaption.readers.base import InputShard
    from recaption.shards.identity import changed_shards, shard_identity

    folder = s3.url("photos")
    images = tuple(io.join(folder, f"img{i}.jpg") for i in range(3))
    for u in images:
        io.write_bytes_atomic(u, b"jpeg")
    io.write_bytes_atomic(io.join(folder, "img0.txt"), b"a red cat")
    shard = InputShard(index=0, uri=folder, files=images, kind="folder")
    ids = shard_identity(shard)
    assert [io.basename(i["path"]) for i in ids] == ["img0.jpg", "img1.jpg", "img2.jpg", "img0.txt"]
    io.write_bytes_atomic(io.join(folder, "img0.txt"), b"a red dog")
    changed, vanished = changed_shards({0: ids}, {0: shard})
    assert "img0.txt changed" in changed[0] and not vanished


def test_a_caption_sidecar_added_on_s3_after_the_run_redoes_its_shard(
    s3: S3, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """Issue 10.2 on an object store: img1.jpg had no sidecar when captured; the img1.txt put
    since is noticed from the rerun's one listing of the folder (no request per file), and the
    shard is redone with it."""
    import pandas as pd

    from recaption.index import IndexStage
    from recaption.readers import open_source
    from recaption.shards import identity
    from tests.builders import image_bytes

    folder, out = s3.url("photos"), s3.url("out")
    for i in range(3):
        io.write_bytes_atomic(io.join(folder, f"img{i}.jpg"), image_bytes(32, 24, seed=i))
    io.write_bytes_atomic(io.join(folder, "img0.txt"), b"a red cat")
    assert run_local(IndexStage(source=open_source(folder)), out, progress=False).ok
    io.write_bytes_atomic(io.join(folder, "img1.txt"), b"a late caption")
    with caplog.at_level("WARNING", logger="recaption"):
        again = run_local(IndexStage(source=open_source(folder)), out, progress=False)
    assert [s["shard"] for s in again.done] == [0]
    assert any("img1.txt appeared" in r.message for r in caplog.records)
    with io.open_file(StageDir(out).data(0)) as f:
        df = pd.read_parquet(f)
    assert dict(zip(df["key"], df["raw_caption"], strict=True))["img1"] == "a late caption"
    assert run_local(IndexStage(source=open_source(folder)), out, progress=False).done == []
    # the comparison itself: the listing the plan made, no request per file
    io.write_bytes_atomic(io.join(folder, "img2.txt"), b"another")
    infos: list[str] = []
    real = io.info
    monkeypatch.setattr(io, "info", lambda u: infos.append(u) or real(u))
    rec = {int(s["shard"]): s["input_identity"] for s in StageDir(out).read_stats()}
    comparison = identity.compare_shards(rec, {0: open_source(folder).shards()[0]}, listed=[0])
    assert comparison.changed == {0: f"{io.join(folder, 'img2.txt')} appeared"} and infos == []


@pytest.mark.parametrize("size", [100, 6 * 2**20], ids=["one PUT", "multipart"])
def test_the_etag_tells_a_same_size_rewrite_on_s3(s3: S3, size: int):
    """On an object store the identity's version is the ETag, which s3fs lists and S3 (moto
    too) derives from the bytes (the MD5 of a single PUT, the MD5 of the parts' MD5s with the
    part count for a multipart upload): a rewrite with the same size is a new version, and
    there is no user-set mtime to hide it behind. The same bytes again keep the ETag."""
    import hashlib

    from recaption.readers.base import InputShard
    from recaption.shards.identity import changed_shards, shard_identity

    url = s3.url("in", "00000.tar")

    def put(byte: bytes) -> None:
        with io.atomic_open(url) as f:  # streamed: over the 5 MiB block, a multipart upload
            for _ in range(0, size, 2**20):
                f.write(byte * min(2**20, size))

    put(b"x")
    shard = InputShard(index=0, uri=url)
    [old] = shard_identity(shard)
    if size == 100:
        assert old["version"] == hashlib.md5(b"x" * 100).hexdigest()
    else:
        assert old["version"].endswith("-2")  # two 5 MiB-or-less parts
    assert "fp" not in old and "ino" not in old  # nothing to add where the store hashes the bytes
    put(b"x")
    assert changed_shards({0: [old]}, {0: shard}) == ({}, {})
    put(b"y")
    changed, vanished = changed_shards({0: [old]}, {0: shard})
    assert list(changed) == [0] and "version" in changed[0] and not vanished
