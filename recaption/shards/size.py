"""A target size for output files, in rows and/or bytes.

One input shard normally gives one data file. An SA-1B tar of ~11k images encoded at 256, 512 and
1024 makes a ~3.7 GB feature file, too big for many loaders' shuffle buffers and for object-store
multipart limits, so a stage may split a shard's rows into several files of at most the target:
``part-{i:05d}-{j:03d}.parquet``, j = 0, 1, ... (:func:`~recaption.shards.layout.part_name`).
The split is greedy in row order and depends only on the rows (never on timing or batch
boundaries), so a rerun writes the same files, and the shard is still committed as one unit (all
its files, then its stats file).

Bytes are the rows' uncompressed sizes (the tensors, which are stored uncompressed, dominate
feature files, so the estimate is close to the file size; for compressed text it is an upper bound).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from recaption.errors import ConfigError
from recaption.shards.layout import part_name


@dataclass(frozen=True)
class ShardSizePolicy:
    """At most ``max_rows`` rows and/or ``max_bytes`` bytes per chunk (``None``: no limit).

    ``split="row_groups"``: one file per input shard with parquet row groups closed at the target
    (readers stream a file with bounded memory). ``split="files"``: separate files closed at the
    target. A single row larger than ``max_bytes`` gets a chunk alone.
    """

    max_rows: int | None = None
    max_bytes: int | None = None
    split: str = "row_groups"

    def __post_init__(self) -> None:
        if self.split not in ("row_groups", "files"):
            raise ConfigError("shard split", self.split, ("row_groups", "files"))
        if self.max_rows is not None and self.max_rows < 1:
            raise ConfigError("max rows per file", self.max_rows, "a positive number of rows, or none")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ConfigError("max bytes per file", self.max_bytes, "a positive number of bytes, or none")

    @property
    def limited(self) -> bool:
        return self.max_rows is not None or self.max_bytes is not None

    def plan(self, row_nbytes: Sequence[int]) -> list[tuple[int, int]]:
        """Split rows of the given sizes into ``[(start, stop), ...]`` chunks under the target."""
        chunker = Chunker(self)
        bounds = [0]
        for i, n in enumerate(row_nbytes):
            if chunker.add(int(n)):
                bounds.append(i)
        bounds.append(len(row_nbytes))
        return list(itertools.pairwise(bounds))

    def file_names(self, index: int, n_chunks: int) -> list[str]:
        """Output names for input shard ``index`` split into ``n_chunks``."""
        if self.split == "row_groups":
            return [part_name(index)]
        return [part_name(index, part=j) for j in range(n_chunks)]


class Chunker:
    """Streaming form of :meth:`ShardSizePolicy.plan`: feed row sizes one at a time."""

    def __init__(self, policy: ShardSizePolicy) -> None:
        self.policy = policy
        self.rows = 0
        self.bytes = 0

    def add(self, nbytes: int) -> bool:
        """Account one row; True when it must start a new chunk (the previous one is full)."""
        p = self.policy
        new = self.rows > 0 and (
            (p.max_rows is not None and self.rows >= p.max_rows)
            or (p.max_bytes is not None and self.bytes + nbytes > p.max_bytes)
        )
        if new:
            self.rows = self.bytes = 0
        self.rows += 1
        self.bytes += nbytes
        return new

    def split(self, row_nbytes: Sequence[int]) -> Iterator[tuple[int, int, bool]]:
        """``(start, stop, new_chunk)`` runs of a batch of rows: rows ``start:stop`` go in one chunk,
        which is a new one when ``new_chunk`` (continuing the previous batch's chunk otherwise)."""
        start, new = 0, False
        for i, n in enumerate(row_nbytes):
            if self.add(int(n)):
                if i > start:
                    yield start, i, new
                start, new = i, True
        if start < len(row_nbytes):
            yield start, len(row_nbytes), new


def row_nbytes(table: Any, columns: Sequence[str] | None = None) -> list[int]:
    """Uncompressed bytes of each row of a ``pyarrow.Table``: value lengths of string and binary
    columns, byte widths of fixed-size ones, an even share of the buffers for anything else."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    total = np.zeros(table.num_rows, dtype=np.int64)
    if table.num_rows == 0:
        return []
    for name in columns if columns is not None else table.column_names:
        col = table.column(name)
        t = col.type
        if (
            pa.types.is_binary(t)
            or pa.types.is_string(t)
            or pa.types.is_large_binary(t)
            or (pa.types.is_large_string(t))
        ):
            lengths = pc.binary_length(col).to_numpy(zero_copy_only=False)
            total += np.nan_to_num(lengths.astype(np.float64), nan=0.0).astype(np.int64)
        elif width := _byte_width(t):
            total += width
        else:
            total += int(col.nbytes) // table.num_rows
    return [int(x) for x in total]


def _byte_width(t: Any) -> int:
    """Bytes per value of a fixed-width type of a byte or more (fixed-size binary included); 0
    for variable-width and bit-packed types."""
    try:
        return int(t.bit_width) // 8
    except ValueError:
        return 0
