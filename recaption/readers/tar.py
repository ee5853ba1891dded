"""Streaming tar shards grouped into samples (the webdataset convention).

Members that share a key (the path up to the first dot of the file name) form one sample:
``000123.jpg``, ``000123.txt`` and ``000123.json``. The tar is read once, sequentially, so it
works on object stores; each image's byte range is recorded so a later stage can reopen it with
one ranged read.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from recaption import io
from recaption.readers.refs import safe_member_name

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


def split_key(name: str) -> tuple[str, str]:
    """``"a/b/000123.seg.jpg"`` → ``("a/b/000123", "seg.jpg")`` (webdataset's rule)."""
    head, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    key = posixpath.join(head, stem) if head else stem
    return key, (ext.lower() if dot else "")


@dataclass
class TarMember:
    name: str
    offset: int  # offset of the data within the (uncompressed) tar
    size: int
    data: bytes


@dataclass
class TarGroup:
    """The members of one sample."""

    key: str
    files: dict[str, TarMember] = field(default_factory=dict)

    def image(self) -> tuple[str, TarMember] | None:
        for ext in IMAGE_EXTENSIONS:
            if ext in self.files:
                return ext, self.files[ext]
        return None


@dataclass
class TarEvent:
    """What the tar stream produced: a sample group, or a problem (with the member name if any)."""

    group: TarGroup | None = None
    problem: str = ""
    member: str = ""
    fatal: bool = False  # the rest of the shard could not be read


def iter_tar_groups(uri: str, wanted: tuple[str, ...] | None = None) -> Iterator[TarEvent]:
    """Yield consecutive member groups of a tar shard, and problems as they are met.

    ``wanted``: extensions whose bytes are read (others are skipped without reading);
    ``None`` reads everything.
    """
    compressed = not uri.endswith(".tar")
    current: TarGroup | None = None
    n_members = 0
    try:
        with io.open_file(uri, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
            for info in tf:
                if not info.isfile():
                    continue
                n_members += 1
                name = safe_member_name(info.name)
                if name is None:
                    yield TarEvent(
                        problem=(
                            f"tar member name {info.name!r} would resolve outside the shard; refused "
                            "(absolute path or '..' component)"
                        ),
                        member=info.name,
                    )
                    continue
                key, ext = split_key(name)
                if current is not None and key != current.key:
                    yield TarEvent(group=current)
                    current = None
                if current is None:
                    current = TarGroup(key=key)
                if wanted is not None and ext not in wanted:
                    continue
                fobj = tf.extractfile(info)
                data = fobj.read() if fobj is not None else b""
                if ext in current.files:
                    yield TarEvent(
                        problem=f"member {name!r} repeats extension {ext!r} of key {key!r}; kept the first",
                        member=name,
                    )
                    continue
                offset = -1 if compressed else int(info.offset_data)
                current.files[ext] = TarMember(name=name, offset=offset, size=int(info.size), data=data)
    except FileNotFoundError:
        yield TarEvent(problem=f"shard not found: {uri}", fatal=True)
        return
    except (tarfile.TarError, EOFError, OSError) as e:
        if current is not None:
            yield TarEvent(group=current)
            current = None
        yield TarEvent(
            problem=f"tar shard is truncated or corrupt after {n_members} members: {type(e).__name__}: {e}",
            fatal=True,
        )
        return
    if current is not None:
        yield TarEvent(group=current)
