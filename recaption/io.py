"""The one place paths are opened: every read and write goes through fsspec.

``./out``, ``file:///data``, ``memory://x`` and ``s3://bucket/x`` (with s3fs installed) all work
the same way. A reader never sees half a file:

- on a filesystem with an atomic rename (local disk, ``memory://``) outputs are written under a
  hidden temporary name in the destination folder and renamed when complete;
- on an object store (S3, GCS...) a rename is a copy plus a delete, so outputs are written straight
  to their final name: an object appears only when its one PUT (or its completed multipart upload)
  succeeds, and a failed write is discarded (the multipart upload aborted), never completed.

Listings and existence checks on an object store bypass fsspec's listings cache: another process
(a Ray worker) may have written since this one last looked.
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

from recaption import interrupts

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


def _proto(fs: Any) -> str:
    return str(fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol)


def renames_atomically(fs: Any) -> bool:
    """True where a rename is atomic and cheap (local disk, memory); False on object stores."""
    return _proto(fs) in ("file", "local", "memory")


def is_object_store(url: str) -> bool:
    """True for URLs whose filesystem has no atomic rename (``s3://``, ``gs://``...)."""
    fs, _ = fs_path(url)
    return not renames_atomically(fs)


def _fresh(url: str) -> tuple[Any, str]:
    """``(filesystem, path)`` with any cached listing of ``path`` dropped: another process (a Ray
    worker, a second run) may have written there since this one listed it."""
    fs, path = fs_path(url)
    if not renames_atomically(fs):
        fs.invalidate_cache(path)
    return fs, path


def exists(url: str) -> bool:
    fs, path = _fresh(url)
    return bool(fs.exists(path))


def isdir(url: str) -> bool:
    fs, path = _fresh(url)
    return bool(fs.isdir(path))


class BucketMissingError(OSError):
    """An object-store bucket that does not exist (never created unless asked)."""


CREATE_BUCKET_ENV = "RECAPTION_CREATE_BUCKET"
_BUCKETS_SEEN: set[tuple[int, str]] = set()  # (filesystem, bucket) known to exist


def makedirs(url: str) -> None:
    """Create a folder. On an object store there are no folders: only the bucket must exist, and a
    missing one is refused (a mistyped name would otherwise become a new bucket) unless
    ``RECAPTION_CREATE_BUCKET=1`` asks for it."""
    fs, path = fs_path(url)
    if renames_atomically(fs):
        fs.makedirs(path, exist_ok=True)
        return
    bucket = path.split("/", 1)[0]
    if (id(fs), bucket) in _BUCKETS_SEEN:
        return
    fs.invalidate_cache(bucket)
    if fs.exists(bucket):
        _BUCKETS_SEEN.add((id(fs), bucket))
        return
    if os.environ.get(CREATE_BUCKET_ENV, "") not in ("1", "true", "yes"):
        raise BucketMissingError(
            f"{to_url(fs, bucket)}: no such bucket; check the name, or set {CREATE_BUCKET_ENV}=1 "
            "to have recaption create it"
        )
    fs.makedirs(bucket, exist_ok=True)


def size(url: str) -> int:
    fs, path = fs_path(url)
    return int(fs.size(path))


def info(url: str) -> dict[str, Any]:
    """The filesystem's record of one file (size, modification time or ETag...), read afresh."""
    fs, path = _fresh(url)
    return dict(fs.info(path))


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
    fs, path = _fresh(url)
    if not fs.exists(path):
        return []
    return sorted(to_url(fs, p) for p in fs.ls(path, detail=False))


def list_entries(url: str) -> dict[str, dict[str, Any]]:
    """The entries directly under ``url``, URL → the filesystem's details (size, mtime or ETag...),
    listed afresh; empty when ``url`` is no folder or cannot be listed."""
    try:
        fs, path = _fresh(url)
        return {to_url(fs, e["name"]): e for e in fs.ls(path, detail=True)}
    except (FileNotFoundError, NotADirectoryError, OSError):
        return {}


def walk_files(url: str) -> list[str]:
    """Sorted URLs of every file below ``url`` (recursive)."""
    fs, path = _fresh(url)
    return sorted(to_url(fs, p) for p in fs.find(path))


def glob(pattern: str) -> list[str]:
    fs, path = fs_path(pattern)
    if not renames_atomically(fs):
        fs.invalidate_cache(posixpath.dirname(path.split("*", 1)[0]))
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
    if _proto(fs) in ("file", "local"):
        os.replace(spath, dpath)
    else:
        fs.mv(spath, dpath)


def remove(url: str) -> None:
    fs, path = fs_path(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path)
    if not renames_atomically(fs):
        fs.invalidate_cache(path)


def create_exclusive(url: str, data: bytes) -> bool:
    """Create ``url`` with ``data`` only if it does not exist; False if it does.

    Atomic: ``O_EXCL`` on local disk, a conditional PUT (``If-None-Match: *``) on S3, so of two
    processes racing for one name exactly one wins. Other filesystems check, then write.
    """
    fs, path = fs_path(url)
    proto = _proto(fs)
    if proto in ("file", "local"):
        # Held as one step: an interrupt between create and write would leave an empty file.
        with interrupts.deferred():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        return True
    if proto in ("s3", "s3a"):
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        fs.invalidate_cache(path)
        return True
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    return True


class _Direct:
    """A write straight to the final name on an object store, discarded (never completed) on error."""

    def __init__(self, url: str, mode: str) -> None:
        fs, path = fs_path(url)
        self.fs, self.path = fs, path
        self.file = fs.open(path, mode)

    def commit(self) -> None:
        self.file.close()
        self.fs.invalidate_cache(self.path)

    def discard(self) -> None:
        discard(self.file)


def discard(f: Any) -> None:
    """Throw away a file being written without making it visible.

    fsspec's own ``close`` (and a ``with`` block that raised) would *complete* the upload of a half
    written object; here an object store's multipart upload is aborted instead.
    """
    with contextlib.suppress(Exception):
        f.discard()
    # Mark it closed so no later close() (a ParquetWriter's finaliser, say) can complete it.
    with contextlib.suppress(Exception):
        f.closed = True
    with contextlib.suppress(Exception):
        f._closed = True


def open_output(url: str, mode: str = "wb") -> tuple[Any, str | None, Any]:
    """Open ``url`` for writing so that nothing is visible under its name until committed.

    Returns ``(file, temporary_url_or_None, handle)``: on local disk the file is a hidden temporary
    sibling (``temporary_url``) that :func:`commit_output` renames; on an object store it is the
    final object itself, completed by :func:`commit_output` and aborted by :func:`abort_output`.
    """
    fs, _ = fs_path(url)
    if renames_atomically(fs):
        tmp = tmp_name(url)
        f = fsspec.open(tmp, mode).open()
        return f, tmp, None
    d = _Direct(url, mode)
    return d.file, None, d


def commit_output(url: str, f: Any, tmp: str | None, handle: Any) -> None:
    """Make a file opened by :func:`open_output` visible under ``url`` (rename or complete)."""
    if handle is not None:
        handle.commit()
        return
    f.close()
    assert tmp is not None
    rename(tmp, url)


def abort_output(f: Any, tmp: str | None, handle: Any) -> None:
    """Drop a file opened by :func:`open_output`; nothing becomes visible."""
    if handle is not None:
        handle.discard()
        return
    with contextlib.suppress(Exception):
        f.close()
    if tmp is not None:
        remove(tmp)


@contextlib.contextmanager
def atomic_open(url: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``url`` so that a reader sees the old file or the whole new one, never part of it.

    Local disk: a temporary sibling renamed onto ``url`` when the block succeeds. Object store: the
    object itself, uploaded when the block succeeds and discarded (multipart upload aborted) if it
    raises.
    """
    parent = posixpath.dirname(url) if "://" in url else os.path.dirname(url)
    if parent:
        makedirs(parent)
    f = tmp = handle = None
    try:
        with interrupts.deferred():  # an interrupt inside open() must find the file to remove
            f, tmp, handle = open_output(url, mode)
        yield f
        commit_output(url, f, tmp, handle)
    except BaseException:  # an interrupt (SIGTERM, Ctrl-C) while committing included
        if f is not None:
            abort_output(f, tmp, handle)
        raise


def write_bytes_atomic(url: str, data: bytes) -> None:
    fs, path = fs_path(url)
    if not renames_atomically(fs):
        makedirs(url)  # the bucket must exist; objects need no folders
        fs.pipe_file(path, data)  # one PUT: all or nothing
        fs.invalidate_cache(path)
        return
    with atomic_open(url, "wb") as f:
        f.write(data)


def write_text_atomic(url: str, text: str) -> None:
    write_bytes_atomic(url, text.encode("utf-8"))


def abort_uploads(url: str) -> list[str]:
    """Abort every incomplete multipart upload below ``url`` (S3 only); returns their keys.

    A killed writer leaves its upload's parts stored (and billed) though no listing shows them.
    Only call this while holding the folder's lease: a live writer's upload would be aborted too.
    """
    fs, path = fs_path(url)
    if _proto(fs) not in ("s3", "s3a"):
        return []
    bucket, _, key = path.partition("/")
    prefix = key.rstrip("/") + "/" if key else ""
    aborted: list[str] = []
    kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        out = fs.call_s3("list_multipart_uploads", **kw)
        for u in out.get("Uploads", []) or []:
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
            aborted.append(u["Key"])
        if not out.get("IsTruncated"):
            return aborted
        kw["KeyMarker"] = out.get("NextKeyMarker", "")
        kw["UploadIdMarker"] = out.get("NextUploadIdMarker", "")
