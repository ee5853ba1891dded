"""Reading another stage's output as input: caption shards → nouns and encode.

Shard ``i`` of the downstream stage is the upstream's ``part-{i:05d}.parquet``, so indices line up
across stages and a pipeline can start shard ``i`` downstream as soon as it exists upstream.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from recaption import io
from recaption.errors import MissingColumnsError, SourceError
from recaption.readers.base import InputShard
from recaption.shards.layout import StageDir


def stage_output_shards(url: str, expected: Iterable[int] | None = None, kind: str = "") -> list[InputShard]:
    """Input shards over a stage output folder.

    With ``expected`` (a pipeline, before the upstream has written anything): exactly those
    indices. Without: the finished shards found there (those whose stats file exists).
    """
    sd = StageDir(url)
    if expected is not None:
        return [InputShard(index=i, uri=sd.data(i), kind=kind) for i in sorted(expected)]
    if not io.exists(sd.stage_file):
        raise SourceError(
            url, "is not a recaption stage output", ["_stage.json and part-NNNNN.parquet files"]
        )
    return [InputShard(index=i, uri=sd.data(i), kind=kind) for i in sorted(sd.done_indices())]


def upstream_stage(url: str) -> str:
    """The stage name recorded in an output folder (``caption``, ``index``...)."""
    import json

    return str(json.loads(io.read_text(StageDir(url).stage_file)).get("stage", ""))


def caption_run_columns(url: str) -> list[str]:
    """The caption columns a caption run writes: ``raw_caption`` and one per ``--prompt COLUMN=``
    (``dense_caption`` for a run recorded before several prompts existed)."""
    import json

    fp = json.loads(io.read_text(StageDir(url).stage_file)).get("fingerprint") or {}
    generated = [str(c["column"]) for c in fp.get("captions") or [] if c.get("column")]
    return ["raw_caption", *(generated or ["dense_caption"])]


def read_shard_table(shard: InputShard, columns: Iterable[str], optional: Iterable[str] = ()) -> Any:
    """The named columns of an upstream shard; a missing required column fails naming what is there."""
    import pyarrow.parquet as pq

    with io.open_file(shard.uri, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        need = list(columns)
        missing = [c for c in need if c not in names]
        if missing:
            raise MissingColumnsError(shard.uri, missing, names)
        cols = need + [c for c in optional if c in names and c not in need]
        return pf.read(columns=cols)
