"""A run that lost its lease commits nothing more, on local disk and on a real S3 API (issues 10.1
and 15): the shard in hand is dropped, its multipart upload aborted, and the run stops naming the
run that holds the lease now."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from recaption import io
from recaption.runner import run_local
from recaption.shards.lease import LEASE_FILE, LeaseLostError
from tests.runner import stages as runner_stages
from tests.s3.stages import TakeoverBlobStage

MIB = 2**20


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    if request.param == "local":
        return str(tmp_path / "t"), None
    s3 = request.getfixturevalue("s3")
    return s3.url("t"), s3


def _files(url: str) -> list[str]:
    return sorted(u[len(url) :].lstrip("/") for u in io.walk_files(url)) if io.exists(url) else []


@pytest.mark.parametrize(
    ("split_rows", "after_row"),
    [(0, -1), (1, 0)],
    ids=["taken-before-the-commit", "taken-before-a-split-file-completes"],
)
def test_a_takeover_mid_shard_drops_the_shard_and_aborts_its_upload(
    root: tuple[str, Any], split_rows: int, after_row: int, monkeypatch: pytest.MonkeyPatch
):
    """Shard 1 writes its rows (on S3 a multipart upload is under way: the block is 5 MiB); then
    another run takes the lease over: after the last row, or (a file per row) after the first,
    before its object completes. Before: shard 1 was committed into the folder the other run owns
    (its uploads completed, its marker written), and shard 2 after it."""
    base, s3 = root
    inputs = []
    for i in range(3):
        inputs.append(io.join(base, "in", f"{i:05d}.bin"))
        io.write_bytes_atomic(inputs[-1], bytes([i]) * 10)
    out = io.join(base, "out")
    uploads_at_takeover: list[list[str]] = []
    take_over = runner_stages.take_over_lease

    def watched(output: str) -> None:
        if s3 is not None:
            uploads_at_takeover.append(s3.uploads())
        take_over(output)

    monkeypatch.setattr(runner_stages, "take_over_lease", watched)
    stage = TakeoverBlobStage(
        inputs=tuple(inputs),
        output=out,
        rows=3,
        nbytes=3 * MIB,
        at=1,
        after_row=after_row,
        split_rows=split_rows,
    )
    with pytest.raises(LeaseLostError, match="pid 4242 on node-9") as e:
        run_local(stage, out, progress=False)
    assert "Shard 1 was dropped, not committed" in str(e.value)
    if s3 is not None:
        if not split_rows:
            # the check proves something: an upload of shard 1 was under way when the lease was lost
            # (pyarrow holds a file's last row group until the next write or the close)
            assert [k for k in uploads_at_takeover[0] if "part-00001" in k]
        assert s3.uploads() == []  # and it was aborted, not completed
    files = _files(out)
    assert not [f for f in files if "00001" in f or "00002" in f], files
    assert not [f for f in files if ".tmp-" in f], files
    assert "_stats/part-00000.json" in files  # the shard finished before the takeover stays
    assert json.loads(io.read_text(io.join(out, LEASE_FILE)))["id"] == "new-holder"
