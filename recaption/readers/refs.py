"""Reopening images from their :class:`~recaption.readers.base.ImageRef`.

A later stage (encode) reopens each image where the reader found it. Tar members with a known
byte range are one ranged read; parquet rows are read per file and cached, since a caption shard
usually points into one source shard. A compressed tar (``.tar.gz``...) has no byte ranges and
no random access: it is decompressed once into a local temporary tar, indexed, and read from
there, rather than decompressed from its start again for every image.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tarfile
import tempfile
import threading
import weakref
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


class _LocalTar:
    """A compressed tar's members, decompressed once into a temporary file, with their byte ranges."""

    def __init__(self, uri: str) -> None:
        fd, self.path = tempfile.mkstemp(prefix="recaption-", suffix=".members")
        self._cleanup = weakref.finalize(self, _remove_quietly, self.path)
        self.members: dict[str, tuple[int, int]] = {}
        try:
            # tarfile's stream mode reads any compression it knows (gz, bz2, xz), whatever the name
            with (
                io.open_file(uri, "rb") as f,
                tarfile.open(fileobj=f, mode="r|*") as tf,
                os.fdopen(fd, "wb") as dst,
            ):
                for info in tf:
                    fobj = tf.extractfile(info) if info.isfile() else None
                    if fobj is None:
                        continue
                    name = info.name[2:] if info.name.startswith("./") else info.name
                    if name in self.members:
                        continue  # the reader kept the first of a repeated name
                    self.members[name] = (dst.tell(), int(info.size))
                    shutil.copyfileobj(fobj, dst, 1 << 22)
        except BaseException:
            self.close()
            raise

    def read(self, uri: str, member: str) -> bytes:
        if member not in self.members:
            raise RefError(f"tar member {member!r} not found in {uri}")
        offset, size = self.members[member]
        with open(self.path, "rb") as f:  # a local temporary file of ours, not a user path
            f.seek(offset)
            return f.read(size)

    def close(self) -> None:
        self._cleanup()


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


class ImageOpener:
    """Reads image bytes from references, caching the last few parquet image columns."""

    def __init__(self, cache_files: int = 2) -> None:
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._cache_files = cache_files
        self._tars: OrderedDict[str, _LocalTar] = OrderedDict()
        self._tars_lock = threading.Lock()  # decode threads share an opener: decompress a tar once

    def _tar_member(self, uri: str, member: str) -> bytes:
        with self._tars_lock:
            tar = self._tars.get(uri)
            if tar is None:
                tar = self._tars[uri] = _LocalTar(uri)
                while len(self._tars) > self._cache_files:
                    # not closed here: a thread may still be reading it; its file goes with the object
                    self._tars.popitem(last=False)
            self._tars.move_to_end(uri)
        return tar.read(uri, member)

    def close(self) -> None:
        """Remove the temporary files of decompressed tars (also done when the opener is collected)."""
        for tar in self._tars.values():
            tar.close()
        self._tars.clear()
        self._cache.clear()

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
                return self._tar_member(ref.uri, ref.member)
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
