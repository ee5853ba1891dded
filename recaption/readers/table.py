"""Tables: img2dataset's parquet output (image bytes in a ``jpg`` column), LAION metadata parquet
(``URL``/``TEXT``, no images: enough for noun statistics), and JSON lines / CSV caption files.

Shard i is a row range of a file: ``shard_size`` rows (default :data:`DEFAULT_TABLE_SHARD_ROWS`).
Rows are read in batches (parquet) or line by line (JSON lines, CSV, see :mod:`~recaption.readers.rows`),
so memory is bounded by a batch, and a line that does not parse is a manifest row naming the file
and the line while the other lines are read.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from recaption.errors import MissingColumnsError, SourceError
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
from recaption.readers.rows import BadRow, TableUnreadable, count_rows, iter_rows, read_schema

STAGE = "read"
# Rows per input shard of a table unless --shard-size says otherwise: a shard's rows are what a
# worker holds at once, so a 200,000-row table needs no more memory than a 10,000-row one, and
# several workers share one big file.
DEFAULT_TABLE_SHARD_ROWS = 10_000
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


def read_schema_names(uri: str) -> tuple[list[str], dict[str, Any]]:
    """Column names and arrow types of a table file; a file that is not one fails naming why."""
    try:
        return read_schema(uri)
    except TableUnreadable as e:
        raise SourceError(uri, f"cannot be read as a table: {e.reason}") from None


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
        size = self.shard_size or DEFAULT_TABLE_SHARD_ROWS
        for uri in self.files:
            try:
                n = count_rows(uri)
            except (TableUnreadable, OSError, ValueError):
                # one shard for the whole file: reading it says why it cannot be read
                out.append(InputShard(index=len(out), uri=uri, kind=self.kind))
                continue
            for s in range(0, max(n, 1), size):
                out.append(
                    InputShard(index=len(out), uri=uri, start=s, stop=min(n, s + size), kind=self.kind)
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
        name = posixpath.basename(shard.uri)
        stem = name.split(".", 1)[0]
        keys = KeyTracker()
        n_good = 0
        bad: list[BadRow] = []  # held until a good row shows the file is readable as its format

        def bad_failure(b: BadRow) -> Failure:
            return Failure(
                key=f"{stem}/{b.row:09d}",
                stage=STAGE,
                reason=f"{name}, {b.reason}",
                uri=shard.uri,
                member=f"line:{b.line}" if b.line else f"row:{b.row}",
            )

        try:
            names, _ = read_schema(shard.uri)
            if not names:
                # an empty file (or blank lines only) has no columns: it holds nothing, it lacks nothing
                yield shard_failure(shard, STAGE, f"{name} holds no rows (empty file)", severity="warning")
                return
            cols = self._columns(names)
            absent = [
                c for c in (self.text_column, self.image_column, self.key_column) if c and c not in names
            ]
            if absent:
                yield shard_failure(
                    shard, STAGE, f"shard lacks column(s) {', '.join(absent)}; it has {', '.join(names)}"
                )
                return
            for item in iter_rows(shard.uri, cols, shard.start, shard.stop):
                if isinstance(item, BadRow):
                    if n_good:
                        yield bad_failure(item)
                    else:
                        bad.append(item)
                    continue
                if not n_good:
                    yield from (bad_failure(b) for b in bad)
                    bad = []
                n_good += 1
                yield from self._row(shard, stem, keys, *item)
        except TableUnreadable as e:
            yield shard_failure(shard, STAGE, f"{name} cannot be read: {e.reason}")
            return
        except Exception as e:
            yield shard_failure(shard, STAGE, f"cannot read table shard {name}: {type(e).__name__}: {e}")
            return
        if len(bad) > 1 and not n_good:
            # not one good row: the file is not in this format at all, one row says so
            yield shard_failure(
                shard,
                STAGE,
                f"{name} cannot be read: none of its {len(bad)} lines parses (first: {bad[0].reason})",
            )
        elif bad:
            yield from (bad_failure(b) for b in bad)
        elif not n_good:
            yield shard_failure(shard, STAGE, "shard holds no rows", severity="warning")

    def _row(
        self, shard: InputShard, stem: str, keys: KeyTracker, row: int, data: dict[str, Any]
    ) -> Iterator[Sample | Failure]:
        key_value = data.get(self.key_column) if self.key_column else None
        key = str(key_value) if key_value is not None else f"{stem}/{row:09d}"
        ref = None
        img: bytes | None = None
        if self.image_column:
            ref = ImageRef(uri=shard.uri, member=f"row:{row}:{self.image_column}")
            value = data.get(self.image_column)
            if isinstance(value, dict):
                value = value.get("bytes")
            if not value:
                status, err = data.get("status"), data.get("error_message")
                why = f"no image bytes in row {row}"
                if status and status != "success":
                    why += f" (img2dataset status {status!r}: {err or 'no message'})"
                yield Failure(key=key, stage=STAGE, reason=why, uri=shard.uri, member=ref.member)
                return
            img = bytes(value)
        dup = keys.check(key, f"row {row}", STAGE, shard.uri, f"row:{row}")
        if dup:
            yield dup
            return
        caption = data.get(self.text_column) if self.text_column else None
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
            c: json_safe(v)
            for c, v in data.items()
            if c in _META_KEEP and c not in _SKIP_META and v is not None
        }
        sample.meta["source_uri"] = shard.uri
        sample.meta["row"] = row
        yield sample
