"""Image references (:class:`ImageRef`) and reopening images from them.

A later stage (encode) reopens each image where the reader found it. Tar members with a known
byte range are one ranged read; parquet rows are read per file and cached, since a caption shard
usually points into one source shard. A compressed tar (``.tar.gz``...) has no byte ranges and
no random access: it is decompressed once into a local temporary tar, indexed, and read from
there, rather than decompressed from its start again for every image.
"""

from __future__ import annotations

import lzma
import os
import posixpath
import shutil
import tarfile
import tempfile
import threading
import weakref
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from recaption import io


@dataclass(frozen=True)
class ImageRef:
    """Where an image's bytes live: a file URL, and for containers a member and a byte range.

    - plain file: ``uri`` only;
    - tar member: ``uri`` of the tar, ``member`` its name, ``offset``/``length`` the byte range
      of its data (so reopening is one ranged read, also on object stores);
    - parquet row: ``uri`` of the parquet file, ``member`` = ``"row:<i>:<column>"``.
    """

    uri: str
    member: str = ""
    offset: int = -1
    length: int = -1

    def read(self) -> bytes:
        """The image bytes (no caching; use :class:`recaption.readers.refs.ImageOpener` in loops)."""
        return read_ref(self)

    def describe(self) -> str:
        return f"{self.uri}::{self.member}" if self.member else self.uri

    def to_columns(self) -> dict[str, Any]:
        return {
            "image_uri": self.uri,
            "image_member": self.member,
            "image_offset": self.offset,
            "image_length": self.length,
        }

    @classmethod
    def from_columns(cls, row: dict[str, Any]) -> ImageRef | None:
        uri = row.get("image_uri")
        if not uri:
            return None
        return cls(
            uri=str(uri),
            member=str(row.get("image_member") or ""),
            offset=int(row.get("image_offset", -1) if row.get("image_offset") is not None else -1),
            length=int(row.get("image_length", -1) if row.get("image_length") is not None else -1),
        )


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
    """A compressed tar's members, decompressed once into an anonymous temporary file.

    The file has no name (``tempfile.TemporaryFile``: unlinked at once), so a worker that is
    killed, even by SIGKILL, leaves nothing behind: the space goes with the process. It lives in
    ``TMPDIR``, which needs room for one decompressed shard per opener. A damaged archive keeps
    the members before the damage readable (the reader captioned those) and remembers why the
    rest cannot be read, without decompressing it again.
    """

    def __init__(self, uri: str) -> None:
        self._file = tempfile.TemporaryFile(prefix="recaption-")  # noqa: SIM115 - lives with the object
        self._cleanup = weakref.finalize(self, self._file.close)
        self.members: dict[str, tuple[int, int]] = {}
        self.damage: str | None = None
        try:
            # tarfile's stream mode reads any compression it knows (gz, bz2, xz), whatever the name
            with io.open_file(uri, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
                for info in tf:
                    fobj = tf.extractfile(info) if info.isfile() else None
                    if fobj is None:
                        continue
                    name = _member_name(info)
                    if name in self.members:
                        continue  # the reader kept the first of a repeated name
                    offset = self._file.tell()
                    shutil.copyfileobj(fobj, self._file, 1 << 22)
                    if self._file.tell() - offset != info.size:
                        raise EOFError(f"member {name!r} is cut short")
                    self.members[name] = (offset, int(info.size))
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
            if isinstance(e, FileNotFoundError):
                self.close()
                raise
            self.damage = f"{type(e).__name__}: {e}"
        except BaseException:
            self.close()
            raise
        self._file.flush()

    def read(self, uri: str, member: str) -> bytes:
        if member not in self.members:
            if self.damage is not None:
                raise RefError(
                    f"tar member {member!r} of {uri} is past where the archive is damaged ({self.damage})"
                )
            raise RefError(f"tar member {member!r} not found in {uri}")
        offset, size = self.members[member]
        return os.pread(self._file.fileno(), size, offset)  # no shared file position: thread-safe

    def close(self) -> None:
        self._cleanup()


class ImageOpener:
    """Reads image bytes from references, caching the last few parquet image columns."""

    def __init__(self, cache_files: int = 2, *, stream_tar_members: bool = False) -> None:
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._cache_files = cache_files
        # one image alone: scan the compressed tar to its member instead of decompressing it all
        self._stream_tar_members = stream_tar_members
        self._tars: OrderedDict[str, _LocalTar] = OrderedDict()
        self._tars_lock = threading.Lock()  # decode threads share an opener: decompress a tar once

    def _tar_member(self, uri: str, member: str) -> bytes:
        if self._stream_tar_members:
            return _stream_to_member(uri, member)
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
        """Free the temporary files of decompressed tars (also done when the opener is collected)."""
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
    """One image's bytes. A member of a compressed tar is streamed to (not the whole archive
    decompressed, as :class:`ImageOpener` does to serve many)."""
    return ImageOpener(cache_files=1, stream_tar_members=True).read(ref)


def _member_name(info: tarfile.TarInfo) -> str:
    return info.name[2:] if info.name.startswith("./") else info.name


def _stream_to_member(uri: str, member: str) -> bytes:
    with io.open_file(uri, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
        for info in tf:
            if _member_name(info) == member:
                fobj = tf.extractfile(info)
                if fobj is None:
                    raise RefError(f"tar member {member!r} in {uri} is not a regular file")
                return fobj.read()
    raise RefError(f"tar member {member!r} not found in {uri}")


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
