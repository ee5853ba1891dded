"""Where a stage's outputs live inside its output folder.

::

    OUTPUT/
      _stage.json                  stage name and the configuration that determines the output
      part-00000.parquet           data of input shard 0 (or part-00000-000.parquet,
                                   part-00000-001.parquet... when a size target splits it)
      _failures/part-00000.parquet failure manifest rows of shard 0 (errors and warnings)
      _stats/part-00000.json       written last: shard 0 is complete (lists its data files)
      _<side>/part-00000.<ext>     side outputs of a stage (e.g. per-shard noun counts)
      _progress/part-00000.json    while shard 0 is being written (removed at commit)
      _lease.json                  while a run writes here (one writer per folder)
      .huggingface.yaml            tells Hugging Face ``datasets`` the rows are ``part-*.parquet``

Names starting with ``_`` or ``.`` are ignored by pyarrow/pandas/polars/duckdb dataset discovery,
so ``pandas.read_parquet(OUTPUT)`` reads the data shards alone. Temporary files (local disk only)
are hidden (``.part-00000.parquet.tmp-…``) and renamed into place when complete. A shard's stats
file is the only proof that it is complete: readers here open only the files it lists.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from recaption import io

# part-00003.parquet, or part-00003-001.parquet when shard 3 was split into several files
PART_RE = re.compile(r"^part-(\d{5,})(?:-(\d{3,}))?\.")


def part_name(index: int, ext: str = "parquet", part: int | None = None) -> str:
    """``part-00007.parquet``, or ``part-00007-002.parquet`` for the third file of a split shard."""
    if part is None:
        return f"part-{index:05d}.{ext}"
    return f"part-{index:05d}-{part:03d}.{ext}"


@dataclass(frozen=True)
class StageDir:
    """The output folder of one stage."""

    url: str

    def data(self, index: int, part: int | None = None) -> str:
        """Shard ``index``'s data file, or its file number ``part`` when the shard is split."""
        return io.join(self.url, part_name(index, part=part))

    def shard_files(self, index: int) -> list[str]:
        """The data files of shard ``index`` present now: one, or several when it was split.

        Looks only under the shard's own name prefix (one small listing on an object store, not
        the whole folder's).
        """
        out = [self.data(index)] if io.exists(self.data(index)) else []
        for url in io.glob(io.join(self.url, f"part-{index:05d}-*.parquet")):
            m = PART_RE.match(io.basename(url))
            if m and m.group(2) is not None and int(m.group(1)) == index:
                out.append(url)
        return sorted(out, key=lambda u: int(PART_RE.match(io.basename(u)).group(2) or -1))  # type: ignore[union-attr]

    def failures(self, index: int) -> str:
        return io.join(self.url, "_failures", part_name(index))

    def stats(self, index: int) -> str:
        return io.join(self.url, "_stats", part_name(index, "json"))

    def progress(self, index: int) -> str:
        """``_progress/part-i.json``: shard ``index`` is being written (for ``recaption status``)."""
        return io.join(self.url, "_progress", part_name(index, "json"))

    def side(self, name: str, index: int, ext: str = "parquet") -> str:
        return io.join(self.url, f"_{name}", part_name(index, ext))

    @property
    def stage_file(self) -> str:
        return io.join(self.url, "_stage.json")

    def done_indices(self) -> set[int]:
        """Shards whose stats file exists, i.e. whose outputs were all renamed into place."""
        out: set[int] = set()
        for url in io.listdir(io.join(self.url, "_stats")):
            m = PART_RE.match(io.basename(url))
            if m and url.endswith(".json") and not io.is_tmp(url):
                out.add(int(m.group(1)))
        return out

    def is_done(self, index: int) -> bool:
        return io.exists(self.stats(index))

    def committed_files(self, stats: dict[str, Any]) -> list[str]:
        """The data files a shard's stats file lists (older stats without a list: ``part-i``)."""
        names = stats.get("files") or [part_name(int(stats.get("shard", 0)))]
        return [io.join(self.url, n) for n in names]

    def data_files(self) -> list[str]:
        """The data files of every finished shard, in shard order: only what stats files list."""
        return [u for s in self.read_stats() for u in self.committed_files(s)]

    def present_part_files(self) -> list[str]:
        """Every ``part-*`` file present, finished or not (for clean-up, never for reading)."""
        return [u for u in io.listdir(self.url) if PART_RE.match(io.basename(u)) and u.endswith(".parquet")]

    def read_stats(self) -> list[dict[str, Any]]:
        out = []
        for url in io.listdir(io.join(self.url, "_stats")):
            if url.endswith(".json") and not io.is_tmp(url):
                out.append(json.loads(io.read_text(url)))
        return sorted(out, key=lambda s: int(s.get("shard", 0)))
