"""Stages for the commit-protocol tests: blobs big enough for multipart uploads, a side output, a
failure row, and hooks to watch (or stall) a shard mid-write."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from recaption import io
from recaption.readers.base import InputShard
from recaption.shards.writer import ShardOutput
from recaption.stage import Stage

# In-process observations of a shard mid-write: (shard, what a reader saw)
OBSERVED: list[tuple[int, dict[str, Any]]] = []


def blob(index: int, row: int, nbytes: int) -> bytes:
    import numpy as np

    return np.random.default_rng(index * 1000 + row).bytes(nbytes)


@dataclass
class BlobStage(Stage):
    """``rows`` rows of ``nbytes`` random (incompressible) bytes per input file.

    ``stall_file``: while it exists, the stage waits after writing its rows (a run to kill -9
    mid-upload). ``observe``: record what readers of the output see before the shard commits.
    """

    name: ClassVar[str] = "blob"
    compression: ClassVar[str] = "none"
    inputs: tuple[str, ...] = ()
    output: str = ""
    rows: int = 3
    nbytes: int = 1000
    stall_file: str = ""
    observe: bool = False

    def schema(self) -> Any:
        import pyarrow as pa

        return pa.schema([pa.field("key", pa.string()), pa.field("blob", pa.binary())])

    def fingerprint(self) -> dict[str, Any]:
        return {"rows": self.rows, "nbytes": self.nbytes}

    def shards(self) -> list[InputShard]:
        return [InputShard(index=i, uri=u, kind="blob") for i, u in enumerate(self.inputs)]

    def process_shard(self, shard: InputShard, out: ShardOutput) -> dict[str, Any]:
        seed = io.read_bytes(shard.uri)
        for r in range(self.rows):
            out.write([{"key": f"{shard.index}-{r}", "blob": blob(shard.index, r, self.nbytes)}])
        out.count("seed_bytes", len(seed))
        out.side_text("sizes", f'{{"rows": {self.rows}}}')
        if self.stall_file:
            while Path(self.stall_file).exists():
                time.sleep(0.05)
        if self.observe:
            OBSERVED.append((shard.index, observe(self.output, shard.index)))
        return {}


def observe(output: str, index: int) -> dict[str, Any]:
    """What every kind of reader of ``output`` sees of shard ``index`` right now."""
    from recaption.shards.inputs import stage_output_shards
    from recaption.shards.layout import StageDir

    sd = StageDir(output)
    return {
        "final_name_exists": io.exists(sd.data(index)),
        "done": index in sd.done_indices(),
        "listed_by_marker": any(io.basename(u).startswith(f"part-{index:05d}") for u in sd.data_files()),
        "downstream_input": index in {s.index for s in stage_output_shards(output)},
    }


@dataclass
class TakeoverBlobStage(BlobStage):
    """A blob stage during whose shard ``at`` another run takes the output's lease over, right
    after row ``after_row`` is written (a multipart upload in progress once the rows exceed the
    block size). ``split_rows``: a data file per that many rows (``split="files"``)."""

    at: int = 1
    after_row: int = -1  # -1: after the last row
    split_rows: int = 0

    def size_policy(self) -> Any:
        from recaption.shards.size import ShardSizePolicy

        return ShardSizePolicy(max_rows=self.split_rows, split="files") if self.split_rows else None

    def process_shard(self, shard: InputShard, out: ShardOutput) -> dict[str, Any]:
        from tests.runner import stages

        after = self.after_row % self.rows
        for r in range(self.rows):
            out.write([{"key": f"{shard.index}-{r}", "blob": blob(shard.index, r, self.nbytes)}])
            if shard.index == self.at and r == after:
                stages.take_over_lease(self.output)
        return {}
