"""Stages for runner tests: the real index stage, with faults injected by marker files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recaption.index import IndexStage
from recaption.readers.base import InputShard
from recaption.shards.writer import ShardOutput


@dataclass
class FaultyIndexStage(IndexStage):
    """Index stage that misbehaves once per marker file present in ``marker_dir``.

    ``raise-<i>``: raise in shard i (a bug);
    ``die-<i>``: kill the worker process halfway through shard i (a lost node);
    the marker is removed first, so the retry or the rerun succeeds.
    """

    marker_dir: str = ""

    def process_shard(self, shard: InputShard, out: ShardOutput) -> dict[str, Any]:
        d = Path(self.marker_dir)
        for what in ("raise", "die"):
            m = d / f"{what}-{shard.index}"
            if m.exists():
                m.unlink()
                # write some rows first, so a half-written temporary file exists when we fail
                out.write([{"key": "half", "source_kind": "x"}])
                if what == "raise":
                    raise RuntimeError(f"injected failure in shard {shard.index}")
                os._exit(1)
        return super().process_shard(shard, out)


@dataclass
class SlowIndexStage(IndexStage):
    """Index stage that takes ``seconds`` per shard: a run long enough for a second one to meet it."""

    seconds: float = 0.5

    def process_shard(self, shard: InputShard, out: ShardOutput) -> dict[str, Any]:
        import time

        time.sleep(self.seconds)
        return super().process_shard(shard, out)


def take_over_lease(output: str, *, host: str = "node-9", pid: int = 4242) -> None:
    """Rewrite ``output``'s lease as another live holder's, as a run that took it over would."""
    import time

    from recaption import io
    from recaption.shards.lease import LEASE_FILE, LeaseInfo

    now = time.time()
    info = LeaseInfo(id="new-holder", host=host, pid=pid, started=now, heartbeat=now, command="run")
    io.write_bytes_atomic(io.join(output, LEASE_FILE), info.to_json())


@dataclass
class TakeoverIndexStage(IndexStage):
    """Index stage during whose shard ``at`` another run takes the output's lease over (after the
    shard's rows are written, before it commits); ``then_raise``: the shard then fails too."""

    output: str = ""
    at: int = 1
    then_raise: bool = False

    def process_shard(self, shard: InputShard, out: ShardOutput) -> dict[str, Any]:
        stats = super().process_shard(shard, out)
        if shard.index == self.at:
            take_over_lease(self.output)
            if self.then_raise:
                raise RuntimeError(f"injected failure in shard {shard.index}")
        return stats
