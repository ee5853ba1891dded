"""Tables: img2dataset's parquet output (image bytes in a ``jpg`` column), LAION metadata parquet
(``URL``/``TEXT``, no images: enough for noun statistics), and JSON lines / CSV caption files.

Shard i is a file, or a row range of one when ``shard_size`` splits large files. Row ranges are
read by row group, so a shard of a large file does not read the whole file.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from recaption import io
from recaption.errors import MissingColumnsError
from recaption.readers.base import (
    Failure,
    ImageRef,
    InputShard,
    Sample,
    Source,
    decode_caption,
    exists_or_failure,
    shard_failure,
)
from recaption.readers.common import KeyTracker, json_safe

STAGE = "read"
TEXT_CANDIDATES = ("caption", "txt", "TEXT", "text", "prompt", "Caption")
IMAGE_CANDIDATES = ("jpg", "jpeg", "png", "webp", "image", "img", "image_bytes", "bytes")
# Columns with image bytes, statuses or large blobs are not copied into sample metadata.
_SKIP_META = {"exif", "jpg", "jpeg", "png", "webp", "image", "img", "image_bytes", "bytes"}
_META_KEEP = (
    "url",
    "URL",
    "width",
    "height",
    "original_width",
    "original_height",
    "sha256",
    "similarity",
    "NSFW",
    "LICENSE",
    "status",
    "error_message",
)


def table_format(uri: str) -> str:
    name = uri.lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    if name.endswith(".jsonl") or name.endswith(".json") or name.endswith(".ndjson"):
        return "jsonl"
    if name.endswith(".csv") or name.endswith(".tsv"):
        return "csv"
    return ""


def read_schema_names(uri: str) -> tuple[list[str], dict[str, Any]]:
    """Column names and arrow types of a table file (reads only the footer for parquet)."""
    import pyarrow.parquet as pq

    fmt = table_format(uri)
    if fmt == "parquet":
        with io.open_file(uri, "rb") as f:
            schema = pq.ParquetFile(f).schema_arrow
    else:
        schema = _read_full(uri, None).schema
    return list(schema.names), {n: schema.field(n).type for n in schema.names}


def _read_full(uri: str, columns: list[str] | None) -> Any:
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    fmt = table_format(uri)
    with io.open_file(uri, "rb") as f:
        if fmt == "parquet":
            return pq.read_table(f, columns=columns)
        if fmt == "jsonl":
            t = pjson.read_json(f)
        else:
            opts = pcsv.ParseOptions(delimiter="\t" if uri.lower().endswith(".tsv") else ",")
            t = pcsv.read_csv(f, parse_options=opts)
    return t.select(columns) if columns else t


def count_rows(uri: str) -> int:
    import pyarrow.parquet as pq

    if table_format(uri) == "parquet":
        with io.open_file(uri, "rb") as f:
            return int(pq.ParquetFile(f).metadata.num_rows)
    return int(_read_full(uri, None).num_rows)


def read_rows(uri: str, columns: list[str], start: int, stop: int | None) -> Any:
    """Rows ``[start, stop)`` of a table, reading only the parquet row groups that overlap."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if table_format(uri) != "parquet":
        t = _read_full(uri, columns)
        return t.slice(start, (stop if stop is not None else t.num_rows) - start)
    with io.open_file(uri, "rb") as f:
        pf = pq.ParquetFile(f)
        md = pf.metadata
        stop = md.num_rows if stop is None else stop
        groups, first_row, row = [], None, 0
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if row + n > start and row < stop:
                groups.append(g)
                if first_row is None:
                    first_row = row
            row += n
        if not groups:
            return pa.table({c: pa.array([], type=pf.schema_arrow.field(c).type) for c in columns})
        t = pf.read_row_groups(groups, columns=columns)
    assert first_row is not None
    return t.slice(start - first_row, stop - start)


def pick_column(
    names: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, uri: str, required: bool
) -> str | None:
    """The named column, or the first candidate present; a missing named column fails at once."""
    if wanted:
        if wanted not in names:
            raise MissingColumnsError(f"{uri}: {what} column", [wanted], names)
        return wanted
    for c in candidates:
        if c in names:
            return c
    if required:
        raise MissingColumnsError(
            f"{uri}: no {what} column (tried {', '.join(candidates)})", candidates[:1], names
        )
    return None


def is_image_type(t: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields))


@dataclass
class TableSource(Source):
    """Rows of parquet / JSON lines / CSV files.

    With an image column, an image source; without, captions only (noun statistics need no images).
    """

    root: str
    files: tuple[str, ...]
    text_column: str | None = None
    image_column: str | None = None
    key_column: str | None = None
    shard_size: int | None = None
    kind: str = "table"  # type: ignore[misc]  # "img2dataset-parquet" | "metadata" | "table"

    @property
    def has_images(self) -> bool:  # type: ignore[override]
        return self.image_column is not None

    def shards(self) -> list[InputShard]:
        out: list[InputShard] = []
        for uri in self.files:
            if not self.shard_size:
                out.append(InputShard(index=len(out), uri=uri, kind=self.kind))
                continue
            n = count_rows(uri)
            for s in range(0, max(n, 1), self.shard_size):
                out.append(
                    InputShard(
                        index=len(out), uri=uri, start=s, stop=min(n, s + self.shard_size), kind=self.kind
                    )
                )
        return out

    def _columns(self, names: list[str]) -> list[str]:
        cols = [c for c in (self.text_column, self.image_column, self.key_column) if c]
        cols += [c for c in names if c in _META_KEEP and c not in cols]
        return cols

    def read_shard(self, shard: InputShard) -> Iterator[Sample | Failure]:
        missing = exists_or_failure(shard, STAGE)
        if missing:
            yield missing
            return
        try:
            names, _ = read_schema_names(shard.uri)
            cols = self._columns(names)
            absent = [
                c for c in (self.text_column, self.image_column, self.key_column) if c and c not in names
            ]
            if absent:
                yield shard_failure(
                    shard, STAGE, f"shard lacks column(s) {', '.join(absent)}; it has {', '.join(names)}"
                )
                return
            table = read_rows(shard.uri, cols, shard.start, shard.stop)
        except Exception as e:
            yield shard_failure(shard, STAGE, f"cannot read table shard: {type(e).__name__}: {e}")
            return
        stem = posixpath.basename(shard.uri).split(".", 1)[0]
        keys = KeyTracker()
        data = table.to_pydict()
        n_rows = table.num_rows
        for i in range(n_rows):
            row = shard.start + i
            key = (
                str(data[self.key_column][i])
                if self.key_column and data[self.key_column][i] is not None
                else f"{stem}/{row:09d}"
            )
            ref = None
            img: bytes | None = None
            if self.image_column:
                ref = ImageRef(uri=shard.uri, member=f"row:{row}:{self.image_column}")
                value = data[self.image_column][i]
                if isinstance(value, dict):
                    value = value.get("bytes")
                if not value:
                    status = data.get("status", [None] * n_rows)[i]
                    err = data.get("error_message", [None] * n_rows)[i]
                    why = f"no image bytes in row {row}"
                    if status and status != "success":
                        why += f" (img2dataset status {status!r}: {err or 'no message'})"
                    yield Failure(key=key, stage=STAGE, reason=why, uri=shard.uri, member=ref.member)
                    continue
                img = bytes(value)
            dup = keys.check(key, f"row {row}", STAGE, shard.uri, f"row:{row}")
            if dup:
                yield dup
                continue
            caption = data[self.text_column][i] if self.text_column else None
            sample = Sample(
                key=key,
                source_kind=self.kind,
                ref=ref,
                data=img,
                caption=None if caption is None else str(caption).strip(),
            )
            if isinstance(caption, bytes):
                sample.caption, warning = decode_caption(caption, f"caption in row {row}")
                if warning:
                    sample.warnings.append(warning)
            sample.meta = {
                c: json_safe(data[c][i])
                for c in cols
                if c in _META_KEEP and c not in _SKIP_META and data[c][i] is not None
            }
            sample.meta["source_uri"] = shard.uri
            sample.meta["row"] = row
            yield sample
        if n_rows == 0:
            yield shard_failure(shard, STAGE, "shard holds no rows", severity="warning")
