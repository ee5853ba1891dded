"""Writing one output shard, and the commit protocol that makes it visible.

Commit order is data, then the failure manifest, then side outputs, then the stats file. The stats
file (``_stats/part-i.json``) is the completion marker and the only thing that makes a shard
visible: it lists the shard's data files, and every reader of stage output (the downstream
stages, ``status``, the analysis, PixArt's Dataset, the nouns merge) believes only shards that have
one. A shard without one is redone from the start by a rerun.

How each file is written depends on the filesystem (:func:`recaption.io.open_output`): on local
disk a hidden temporary file renamed into place at commit, so even tools that ignore the marker
(``pandas.read_parquet(OUTPUT)``) never see half a file; on an object store the final name
directly (a rename there is a copy plus a delete), completed as one PUT or one multipart upload,
aborted on failure. While a shard is being written ``_progress/part-i.json`` says so (for
``recaption status``); it is removed after the marker is written. With a
:class:`~recaption.shards.size.ShardSizePolicy` of ``split="files"`` a shard's rows go to several
files (``part-{i:05d}-{j:03d}.parquet``), all listed in its marker.

Given the run's lease (``lease=``, a :class:`~recaption.shards.lease.LeaseToken`), a shard reads the
lease file once before anything of it becomes visible (before its data file is renamed into place
or its object completed, and before each object of a split shard completes) and, if another run
has taken the lease over, is dropped instead (:class:`~recaption.shards.lease.LeaseLostError`):
its temporary files are removed and its uploads aborted, but nothing at a final name is touched,
since it may be the new holder's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections import Counter
from typing import Any

from recaption import interrupts, io
from recaption.readers.base import SEVERITY_WARNING, Failure, InputShard, Sample
from recaption.shards.layout import StageDir
from recaption.shards.lease import LeaseLostError, LeaseToken
from recaption.shards.manifest import failures_table, reason_category
from recaption.shards.size import Chunker, ShardSizePolicy, row_nbytes

log = logging.getLogger("recaption")


def write_parquet_atomic(
    url: str, table: Any, compression: str = "zstd", metadata: dict | None = None
) -> int:
    """Write a table to ``url`` under a temporary name and rename it; returns bytes written."""
    import pyarrow.parquet as pq

    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with io.atomic_open(url, "wb") as f:
        pq.write_table(table, f, compression=compression)
        return int(f.tell()) if hasattr(f, "tell") else 0


class ShardOutput:
    """Collects one shard's rows, failures and counters; :meth:`commit` makes them visible."""

    #: Set by the runner: told how many more input samples are done (see :meth:`progress`).
    on_progress: Any = None

    def progress(self, n: int) -> None:
        """A stage calls this per batch with the samples it finished, for progress within the shard."""
        if self.on_progress is not None and n:
            self.on_progress(n)

    def __init__(
        self,
        stage_dir: StageDir,
        shard: InputShard,
        schema: Any,
        *,
        stage: str,
        metadata: dict[str, str] | None = None,
        compression: str = "zstd",
        row_group_rows: int | None = None,
        writer_options: dict[str, Any] | None = None,
        size_policy: ShardSizePolicy | None = None,
        lease: LeaseToken | None = None,
    ) -> None:
        import pyarrow as pa

        self.stage_dir = stage_dir
        self.lease = lease
        # Set once the lease is known lost: abort() then leaves final names alone (another run's now).
        self.lease_lost = False
        self.shard = shard
        self.stage = stage
        md = dict(schema.metadata or {})
        if metadata:
            md.update({k.encode(): v.encode() for k, v in metadata.items()})
        self.schema: pa.Schema = schema.with_metadata(md) if md else schema
        self.compression = compression
        self.row_group_rows = row_group_rows
        # e.g. per-column compression/dictionary/statistics for tensor columns (encoder schema)
        self.writer_options = {"compression": compression, **(writer_options or {})}
        self.failures: list[Failure] = []
        self.counters: Counter[str] = Counter()
        self.rows = 0
        self._side: dict[str, tuple[Any, str]] = {}
        self.size_policy = size_policy if size_policy is not None and size_policy.limited else None
        self._chunker = Chunker(self.size_policy) if self.size_policy is not None else None
        self._split_files = self.size_policy is not None and self.size_policy.split == "files"
        # (temporary or None, final, object-store handle or None) of closed split files
        self._done_files: list[tuple[str | None, str, Any]] = []
        self._target: str | None = None
        self._tmp: str | None = None
        self._handle: Any = None
        self._file: Any = None
        self._writer: Any = None
        self._started = time.time()
        self.input_identity: list[dict[str, Any]] | None = None
        # Opened at once, not at the first rows: `recaption status` sees the shard in progress
        # while its first batch is still on the GPU.
        self._progress_text = json.dumps(
            {"shard": shard.index, "host": socket.gethostname(), "pid": os.getpid(), "started": self._started}
        )
        try:
            io.write_text_atomic(self.stage_dir.progress(shard.index), self._progress_text)
            self._open()
        except BaseException:  # an interrupt mid-open must not leave the temporary file
            self.abort()
            raise

    # -- rows --------------------------------------------------------------------------------
    def _open(self) -> None:
        import pyarrow.parquet as pq

        target = self.stage_dir.data(
            self.shard.index, part=len(self._done_files) if self._split_files else None
        )
        io.makedirs(self.stage_dir.url)
        self._target = target
        with interrupts.deferred():  # an interrupt inside open() must find the file to remove
            self._file, self._tmp, self._handle = io.open_output(target)
        self._writer = pq.ParquetWriter(self._file, self.schema, **self.writer_options)

    def write(self, rows: list[dict[str, Any]] | Any) -> None:
        """Append rows (a list of dicts, or a ``pyarrow.Table``/``RecordBatch`` with the schema)."""
        import pyarrow as pa

        if isinstance(rows, list):
            if not rows:
                return
            table = pa.Table.from_pylist(rows, schema=self.schema)
        elif isinstance(rows, pa.RecordBatch):
            table = pa.Table.from_batches([rows]).cast(self.schema)
        else:
            table = rows.cast(self.schema) if rows.schema != self.schema else rows
        if table.num_rows == 0:
            return
        if self._chunker is None:
            self._write(table)
            return
        for a, b, new_chunk in self._chunker.split(row_nbytes(table)):
            if new_chunk and self._split_files and self._writer is not None:
                if self._handle is not None:  # an object store: closing completes the object
                    self.verify_lease()
                self._close_file()
            self._write(table.slice(a, b - a))

    def _write(self, table: Any) -> None:
        if self._writer is None:
            self._open()
        self._writer.write_table(table, row_group_size=self.row_group_rows)
        self.rows += table.num_rows

    def _close_file(self) -> None:
        """Finish the current file: under its temporary name on disk (renamed at commit); on an
        object store the object is completed now, invisible to readers until the marker lists it."""
        assert self._writer is not None and self._target is not None
        self._writer.close()
        # Closed and recorded as one step, so abort() removes the file whichever side of the
        # close an interrupt lands (on an object store the close makes the object).
        with interrupts.deferred():
            if self._handle is not None:
                io.commit_output(self._target, self._file, None, self._handle)
            else:
                self._file.close()
            self._done_files.append((self._tmp, self._target, self._handle))
            self._writer = self._file = self._tmp = self._target = self._handle = None

    # -- failures and counters ---------------------------------------------------------------
    def fail(self, failure: Failure) -> None:
        self.failures.append(failure)
        self.counters[f"{failure.severity}s"] += 1

    def fail_sample(self, sample: Sample, reason: str, severity: str = "error") -> None:
        self.fail(Failure.for_sample(sample, self.stage, reason, severity))

    def warn_sample(self, sample: Sample, reason: str) -> None:
        self.fail(Failure.for_sample(sample, self.stage, reason, SEVERITY_WARNING))

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def side_output(self, name: str, table: Any) -> None:
        """A per-shard table written to ``_<name>/part-i.parquet`` at commit."""
        self._side[name] = (table, "parquet")

    def side_text(self, name: str, text: str, ext: str = "json") -> None:
        """A per-shard text file written to ``_<name>/part-i.<ext>`` at commit (before the stats)."""
        self._side[name] = (text, ext)

    # -- commit --------------------------------------------------------------------------------
    def verify_lease(self) -> None:
        """One read of the lease file: if another run holds it now, drop this shard and raise
        :class:`LeaseLostError` (nothing of the shard becomes visible)."""
        if self.lease is None:
            return
        try:
            self.lease.verify()
        except LeaseLostError as e:
            self.lease_lost = True
            self.abort()
            raise LeaseLostError(f"{e}. Shard {self.shard.index} was dropped, not committed") from None

    def commit(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Rename everything into place; the stats file goes last. Returns the stats.

        First the lease is verified (see :meth:`verify_lease`): before the data file is renamed
        onto its final name (where the new holder may have written this shard already) or, on an
        object store, before the close that completes it.
        """
        self.verify_lease()
        # The current file is always open here (opened with the output, reopened at each split),
        # so an empty shard still gets a valid, empty data file.
        self._close_file()
        files = [final for _, final, _ in self._done_files]
        for tmp, final, _ in self._done_files:
            if tmp is not None:
                io.rename(tmp, final)
        self._done_files = []
        # An earlier, interrupted attempt may have left files this one does not write (another
        # split, or one file where there are now several): they are not part of the shard.
        written = {io.basename(f) for f in files}
        for url in self.stage_dir.shard_files(self.shard.index):
            if io.basename(url) not in written:
                io.remove(url)
        write_parquet_atomic(
            self.stage_dir.failures(self.shard.index), failures_table(self.failures, self.shard.index)
        )
        for name, (payload, ext) in self._side.items():
            url = self.stage_dir.side(name, self.shard.index, ext)
            if ext == "parquet":
                write_parquet_atomic(url, payload)
            else:
                io.write_text_atomic(url, payload)
        reasons: dict[bool, Counter[str]] = {False: Counter(), True: Counter()}  # keyed by "is a warning"
        for f in self.failures:
            reasons[f.severity == SEVERITY_WARNING][reason_category(f.reason)] += 1
        stats = {
            "stage": self.stage,
            "shard": self.shard.index,
            "input": self.shard.to_dict()
            if not self.shard.files
            else {
                **self.shard.to_dict(),
                "files": len(self.shard.files),
                # listed in input_identity with their versions
                **({} if self.shard.companions is None else {"companions": len(self.shard.companions)}),
            },
            "rows": self.rows,
            "errors": reasons[False].total(),
            "warnings": reasons[True].total(),
            "error_reasons": dict(reasons[False].most_common(20)),
            "warning_reasons": dict(reasons[True].most_common(20)),
            "counters": dict(sorted(self.counters.items())),
            "seconds": round(time.time() - self._started, 3),
            "data_bytes": sum(io.size(f) for f in files),
        }
        # The marker lists the shard's data files: readers open these and nothing else.
        stats["files"] = [io.basename(f) for f in files]
        if self.input_identity is not None:
            stats["input_identity"] = self.input_identity
            if self.shard.companions is not None:
                # the identity lists every companion that existed: any other one appearing later
                # is new to this shard's rows (recaption.shards.identity)
                stats["input_companions_listed"] = True
        if extra:
            stats.update(extra)
        io.write_text_atomic(
            self.stage_dir.stats(self.shard.index), json.dumps(stats, indent=1, sort_keys=True)
        )
        io.remove(self.stage_dir.progress(self.shard.index))
        return stats

    def abort(self) -> None:
        """Drop what this attempt wrote (the shard will be redone); nothing becomes visible."""
        if self._file is not None:
            if self._handle is not None:
                # Discard before closing the writer: its footer must not complete the upload.
                io.abort_output(self._file, None, self._handle)
                with contextlib.suppress(Exception):
                    self._writer.close()
            else:
                with contextlib.suppress(Exception):
                    if self._writer is not None:
                        self._writer.close()
                io.abort_output(self._file, self._tmp, None)
        for tmp, final, handle in self._done_files:
            if handle is None:
                io.remove(tmp)  # type: ignore[arg-type]
            elif not self.lease_lost:
                # a completed object of a split shard is unreferenced without the marker: remove it
                io.remove(final)
            else:
                # The name may hold the new lease holder's object by now; its next sweep removes
                # ours if it is still there (unreferenced: no marker lists it).
                log.warning(
                    "%s: left %s in place (the folder is another run's now)", self.stage_dir.url, final
                )
        self._done_files = []
        self._writer = self._file = self._tmp = self._handle = None
        with contextlib.suppress(Exception):
            url = self.stage_dir.progress(self.shard.index)
            # after a takeover the marker may be the new holder's (same shard): only ours goes
            if not self.lease_lost or io.read_text(url) == self._progress_text:
                io.remove(url)
