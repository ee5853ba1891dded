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
from recaption.images.formats import image_extensions
from recaption.readers.refs import safe_member_name


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
        for ext in image_extensions():
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
    regular: dict[str, TarMember] = {}  # where each regular member's bytes are (hard links point there)
    n_members = 0
    try:
        with io.open_file(uri, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
            for info in tf:
                if info.isdir():
                    continue  # folders hold members; they are none themselves
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
                target: TarMember | None = None
                if info.islnk():
                    # a hard link is another name for a regular member before it: that member's bytes
                    target = regular.get(safe_member_name(info.linkname) or "")
                    if target is None:
                        yield TarEvent(
                            problem=f"tar member {name!r} is a hard link to {info.linkname!r}, which is "
                            "not a regular member before it; not read",
                            member=name,
                        )
                        continue
                elif not info.isfile():
                    yield TarEvent(problem=_not_regular(info, name), member=name)
                    continue
                key, ext = split_key(name)
                offset = -1 if compressed else int(info.offset_data)
                if target is None:
                    regular[name] = TarMember(name=name, offset=offset, size=int(info.size), data=b"")
                if current is not None and key != current.key:
                    yield TarEvent(group=current)
                    current = None
                if current is None:
                    current = TarGroup(key=key)
                if wanted is not None and ext not in wanted:
                    continue
                if target is not None:
                    data = _linked_bytes(uri, target)
                    member = TarMember(name=target.name, offset=target.offset, size=target.size, data=data)
                else:
                    fobj = tf.extractfile(info)
                    data = fobj.read() if fobj is not None else b""
                    member = TarMember(name=name, offset=offset, size=int(info.size), data=data)
                if ext in current.files:
                    yield TarEvent(
                        problem=f"member {name!r} repeats extension {ext!r} of key {key!r}; kept the first",
                        member=name,
                    )
                    continue
                current.files[ext] = member
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


def _not_regular(info: tarfile.TarInfo, name: str) -> str:
    if info.issym():
        return (
            f"tar member {name!r} is a symbolic link to {info.linkname!r}; links inside a tar are not "
            "followed (store the file itself, or a hard link)"
        )
    what = {
        tarfile.CHRTYPE: "a character device",
        tarfile.BLKTYPE: "a block device",
        tarfile.FIFOTYPE: "a named pipe",
    }.get(info.type, f"of tar type {info.type!r}")
    return f"tar member {name!r} is {what}, not a regular file; not read"


def _linked_bytes(uri: str, target: TarMember) -> bytes:
    """The bytes of an earlier member (a stream cannot seek back): a ranged read of the tar, or for
    a compressed one a second pass to the member."""
    from recaption.readers.refs import ImageOpener, ImageRef

    ref = ImageRef(uri=uri, member=target.name, offset=target.offset, length=target.size)
    return ImageOpener(cache_files=1, stream_tar_members=True).read(ref)
