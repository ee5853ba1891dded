"""Reopening images from their :class:`~recaption.readers.base.ImageRef`.

A later stage (encode) reopens each image where the reader found it. Tar members with a known
byte range are one ranged read; parquet rows are read per file and cached, since a caption shard
usually points into one source shard.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections import OrderedDict
from typing import Any

from recaption import io
from recaption.readers.base import ImageRef


class RefError(Exception):
    """An image reference that no longer opens; ``reason`` is for the manifest."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_row_member(member: str) -> tuple[int, str]:
    """``"row:12:jpg"`` → ``(12, "jpg")``."""
    try:
        _, row, column = member.split(":", 2)
        return int(row), column
    except ValueError:
        raise RefError(
            f"malformed parquet row reference {member!r} (expected 'row:<index>:<column>')"
        ) from None


def _read_tar_member(uri: str, member: str) -> bytes:
    with io.open_file(uri, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
        for info in tf:
            name = info.name[2:] if info.name.startswith("./") else info.name
            if name == member:
                fobj = tf.extractfile(info)
                if fobj is None:
                    raise RefError(f"tar member {member!r} in {uri} is not a regular file")
                return fobj.read()
    raise RefError(f"tar member {member!r} not found in {uri}")


class ImageOpener:
    """Reads image bytes from references, caching the last few parquet image columns."""

    def __init__(self, cache_files: int = 2) -> None:
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._cache_files = cache_files

    def _parquet_column(self, uri: str, column: str) -> Any:
        import pyarrow.parquet as pq

        k = (uri, column)
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        with io.open_file(uri, "rb") as f:
            col = pq.read_table(f, columns=[column]).column(column)
        self._cache[k] = col
        while len(self._cache) > self._cache_files:
            self._cache.popitem(last=False)
        return col

    def read(self, ref: ImageRef) -> bytes:
        """The bytes behind ``ref``; raises :class:`RefError` with a readable reason."""
        try:
            if ref.member.startswith("row:"):
                row, column = parse_row_member(ref.member)
                col = self._parquet_column(ref.uri, column)
                if row >= len(col):
                    raise RefError(f"row {row} is past the end of {ref.uri} ({len(col)} rows)")
                value = col[row].as_py()
                if isinstance(value, dict):  # Hugging Face image struct {bytes, path}
                    value = value.get("bytes")
                if not value:
                    raise RefError(f"row {row} of {ref.uri} has no image bytes in column {column!r}")
                return bytes(value)
            if ref.offset >= 0 and ref.length >= 0:
                data = io.read_bytes(ref.uri, ref.offset, ref.length)
                if len(data) != ref.length:
                    raise RefError(
                        f"{ref.describe()}: expected {ref.length} bytes at offset {ref.offset}, got "
                        f"{len(data)} (the shard changed or was truncated since it was read)"
                    )
                return data
            if ref.member:
                return _read_tar_member(ref.uri, ref.member)
            return io.read_bytes(ref.uri)
        except RefError:
            raise
        except FileNotFoundError:
            raise RefError(f"image no longer exists: {ref.describe()}") from None
        except Exception as e:
            raise RefError(f"cannot read image {ref.describe()}: {type(e).__name__}: {e}") from None


def read_ref(ref: ImageRef) -> bytes:
    return ImageOpener(cache_files=1).read(ref)


def safe_member_name(name: str) -> str | None:
    """The normalised member name, or ``None`` if it would resolve outside the archive."""
    if name.startswith("./"):
        name = name[2:]
    if not name or name.startswith("/") or "\\" in name:
        return None
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or "/../" in f"/{name}/":
        return None
    return norm
