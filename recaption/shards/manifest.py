"""The failure manifest: one row per sample (or shard) that a stage could not use, or used with a
warning, with its key, where it came from, the stage, and a reason a person understands."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from recaption import io
from recaption.readers.base import Failure

FAILURE_COLUMNS = ("key", "stage", "severity", "reason", "uri", "member", "shard")


def reason_category(reason: str) -> str:
    """A short grouping label for a reason: its text before the first colon, without quoted
    names, parenthesised details or numbers (``"duplicate key 'a': ..."`` → ``"duplicate key"``).

    For grouping and counting only: what a person reads is the reason itself (the manifest,
    ``inspect``'s failure list). Details go before the colon is looked for, so a colon inside
    them (``"(byte 3: b'\\xff')"``) does not cut the label short, and only free-standing
    numbers are masked, so names such as ``UTF-8`` stay whole."""
    import re

    head = re.sub(r"'[^']*'|\"[^\"]*\"|\([^)]*\)", "", reason)
    head = head.split(": ", 1)[0]
    head = re.sub(r"(?<![\w.-])\d+(\.\d+)?(?![\w-])", "N", head)
    head = re.sub(r"\s+([;,])", r"\1", re.sub(r"\s+", " ", head))
    return head.strip(" ;,.") or "unknown"


def failure_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("key", pa.string()),
            pa.field("stage", pa.string()),
            pa.field("severity", pa.string()),
            pa.field("reason", pa.string()),
            pa.field("uri", pa.string()),
            pa.field("member", pa.string()),
            pa.field("shard", pa.int32()),
        ]
    )


def failures_table(failures: Iterable[Failure], shard: int) -> Any:
    import pyarrow as pa

    rows = [
        {
            "key": f.key,
            "stage": f.stage,
            "severity": f.severity,
            "reason": f.reason,
            "uri": f.uri,
            "member": f.member,
            "shard": shard,
        }
        for f in failures
    ]
    return pa.Table.from_pylist(rows, schema=failure_schema())


def read_failures(stage_url: str) -> Any:
    """All manifest rows of a stage output folder, as a pandas DataFrame (empty if none)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from recaption.shards.layout import PART_RE, StageDir

    folder = io.join(stage_url, "_failures")
    done = StageDir(stage_url).done_indices()  # only shards whose stats marker says complete
    tables = []
    for url in io.listdir(folder):
        m = PART_RE.match(io.basename(url))
        if url.endswith(".parquet") and not io.is_tmp(url) and m and int(m.group(1)) in done:
            with io.open_file(url, "rb") as f:
                tables.append(pq.read_table(f))
    if not tables:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in FAILURE_COLUMNS})
    import pyarrow as pa

    return pa.concat_tables(tables).to_pandas()
