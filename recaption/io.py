"""The one place paths are opened: every read and write goes through fsspec.

``./out``, ``file:///data``, ``memory://x`` and ``s3://bucket/x`` (with s3fs installed) all work
the same way. Outputs are written under a temporary name in the destination folder and renamed
when complete, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

TMP_MARK = ".tmp-"


def fs_path(url: str) -> tuple[Any, str]:
    """Return ``(filesystem, path)`` for a URL or local path."""
    fs, path = url_to_fs(url)
    return fs, path


def protocol_of(url: str) -> str:
    """``"file"`` for local paths, else the URL's scheme."""
    fs, _ = fs_path(url)
    proto = fs.protocol
    return proto[0] if isinstance(proto, tuple | list) else str(proto)


def to_url(fs: Any, path: str) -> str:
    """Turn a filesystem and a path back into a URL that :func:`fs_path` understands."""
    proto = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    if proto in ("file", "local"):
        return path
    return fs.unstrip_protocol(path)


def normalize(url: str) -> str:
    """A canonical form of a URL: absolute for local paths, unchanged scheme otherwise."""
    if "://" not in url:
        return os.path.abspath(url)
    fs, path = fs_path(url)
    return to_url(fs, path)


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL (``posixpath`` rules for remote URLs)."""
    if "://" in url:
        return posixpath.join(url, *parts)
    return os.path.join(url, *parts)


def basename(url: str) -> str:
    return posixpath.basename(url.rstrip("/"))


def exists(url: str) -> bool:
    fs, path = fs_path(url)
    return bool(fs.exists(path))


def isdir(url: str) -> bool:
    fs, path = fs_path(url)
    return bool(fs.isdir(path))


def makedirs(url: str) -> None:
    fs, path = fs_path(url)
    fs.makedirs(path, exist_ok=True)


def size(url: str) -> int:
    fs, path = fs_path(url)
    return int(fs.size(path))


def modified(url: str) -> float:
    """Last modification time (seconds since the epoch), or 0.0 where the filesystem has none."""
    fs, path = fs_path(url)
    try:
        m = fs.modified(path)
    except (NotImplementedError, OSError, AttributeError, ValueError):
        return 0.0
    return float(m.timestamp()) if hasattr(m, "timestamp") else float(m)


def listdir(url: str) -> list[str]:
    """Sorted URLs of the entries directly under ``url`` (empty if it does not exist)."""
    fs, path = fs_path(url)
    if not fs.exists(path):
        return []
    return sorted(to_url(fs, p) for p in fs.ls(path, detail=False))


def walk_files(url: str) -> list[str]:
    """Sorted URLs of every file below ``url`` (recursive)."""
    fs, path = fs_path(url)
    return sorted(to_url(fs, p) for p in fs.find(path))


def glob(pattern: str) -> list[str]:
    fs, path = fs_path(pattern)
    return sorted(to_url(fs, p) for p in fs.glob(path))


def open_file(url: str, mode: str = "rb", **kwargs: Any) -> Any:
    """Open a URL; use as a context manager."""
    return fsspec.open(url, mode, **kwargs)


def read_bytes(url: str, offset: int = 0, length: int = -1) -> bytes:
    """Read a whole file or a byte range of it (a ranged GET on object stores)."""
    fs, path = fs_path(url)
    if offset == 0 and length < 0:
        return bytes(fs.cat_file(path))
    end = None if length < 0 else offset + length
    return bytes(fs.cat_file(path, start=offset, end=end))


def read_text(url: str, encoding: str = "utf-8") -> str:
    return read_bytes(url).decode(encoding)


def tmp_name(url: str) -> str:
    """A unique temporary sibling of ``url``; hidden, so listings of finished files skip it."""
    head, tail = posixpath.split(url) if "://" in url else os.path.split(url)
    name = f".{tail}{TMP_MARK}{uuid.uuid4().hex[:12]}"
    return join(head, name) if head else name


def is_tmp(url: str) -> bool:
    return TMP_MARK in basename(url) and basename(url).startswith(".")


def rename(src: str, dst: str) -> None:
    """Move ``src`` onto ``dst``; atomic on local filesystems (``os.replace``)."""
    fs, spath = fs_path(src)
    _, dpath = fs_path(dst)
    proto = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    if proto in ("file", "local"):
        os.replace(spath, dpath)
    else:
        fs.mv(spath, dpath)


def remove(url: str) -> None:
    fs, path = fs_path(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path)


@contextlib.contextmanager
def atomic_open(url: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to a temporary sibling and rename onto ``url`` only if the block succeeds."""
    parent = posixpath.dirname(url) if "://" in url else os.path.dirname(url)
    if parent:
        makedirs(parent)
    tmp = tmp_name(url)
    try:
        with fsspec.open(tmp, mode) as f:
            yield f
        rename(tmp, url)
    except BaseException:
        remove(tmp)
        raise


def write_bytes_atomic(url: str, data: bytes) -> None:
    with atomic_open(url, "wb") as f:
        f.write(data)


def write_text_atomic(url: str, text: str) -> None:
    write_bytes_atomic(url, text.encode("utf-8"))
