"""Folders of images with optional sidecars (``photo.jpg`` + ``photo.txt`` caption + ``photo.json``
metadata), including img2dataset's ``files`` output (``00000/000000012.jpg`` ... beside
``00000.parquet``), and folders of captions alone (``sa_<id>.txt``: PixArt's SAM-LLaVA release).

Keys are paths relative to the root without extension (``sub/photo``). Shards are the img2dataset
shard folders where they exist, else chunks of ``shard_size`` files in sorted order.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

from recaption import io
from recaption.readers.base import Failure, ImageRef, InputShard, Sample, Source
from recaption.readers.common import caption_from_bytes, json_safe, parse_json_sidecar
from recaption.readers.tar import IMAGE_EXTENSIONS

STAGE = "read"


def _rel(root: str, url: str) -> str:
    r = root.rstrip("/")
    return url[len(r) + 1 :] if url.startswith(r + "/") else posixpath.basename(url)


def _stem(path: str) -> str:
    head, base = posixpath.split(path)
    stem = base.rsplit(".", 1)[0] if "." in base else base
    return posixpath.join(head, stem) if head else stem


def _ext(path: str) -> str:
    base = posixpath.basename(path)
    return base.rsplit(".", 1)[1].lower() if "." in base else ""


@dataclass
class FolderSource(Source):
    """Files under ``root``: images (``has_images``) or, with ``captions_only``, ``.txt`` captions."""

    root: str
    groups: tuple[tuple[str, ...], ...]  # files of each shard (images, or .txt when captions_only)
    captions_only: bool = False
    kind: str = "folder"  # type: ignore[misc]
    # (dropped file, kept file) for files whose key (path without extension) is already taken
    duplicates: tuple[tuple[str, str], ...] = ()

    @property
    def has_images(self) -> bool:  # type: ignore[override]
        return not self.captions_only

    @classmethod
    def scan(
        cls, root: str, files: list[str], shard_size: int, captions_only: bool = False, kind: str = "folder"
    ) -> FolderSource:
        wanted = ("txt",) if captions_only else IMAGE_EXTENSIONS
        main = sorted(f for f in files if _ext(f) in wanted and not io.is_tmp(f))
        first: dict[str, str] = {}
        dups = []
        for f in main:
            k = _stem(_rel(root, f))
            if k in first:
                dups.append((f, first[k]))
            else:
                first[k] = f
        # img2dataset "files" output: shard folders 00000/ each with a sibling 00000.parquet.
        top = {_rel(root, f).split("/", 1)[0] for f in main if "/" in _rel(root, f)}
        shard_dirs = sorted(d for d in top if d.isdigit())
        names = {_rel(root, f) for f in files}
        if shard_dirs and all(f"{d}.parquet" in names for d in shard_dirs):
            by_dir: dict[str, list[str]] = {d: [] for d in shard_dirs}
            for f in main:
                d = _rel(root, f).split("/", 1)[0]
                if d in by_dir:
                    by_dir[d].append(f)
            groups = tuple(tuple(by_dir[d]) for d in shard_dirs)
            return cls(
                root=root,
                groups=groups,
                captions_only=captions_only,
                kind="img2dataset-files",
                duplicates=tuple(dups),
            )
        groups = tuple(tuple(main[i : i + shard_size]) for i in range(0, len(main), shard_size))
        return cls(root=root, groups=groups, captions_only=captions_only, kind=kind, duplicates=tuple(dups))

    def shards(self) -> list[InputShard]:
        return [
            InputShard(index=i, uri=self.root, files=g, kind=self.kind) for i, g in enumerate(self.groups)
        ]

    def read_shard(self, shard: InputShard) -> Iterator[Sample | Failure]:
        dropped = dict(self.duplicates)
        for url in shard.files:
            rel = _rel(self.root, url)
            key = _stem(rel)
            if url in dropped:
                yield Failure(
                    key=key,
                    stage=STAGE,
                    uri=url,
                    reason=f"duplicate key {key!r}: {_rel(self.root, dropped[url])} has the same name "
                    "without extension; this one was dropped",
                )
                continue
            if not io.exists(url):
                yield Failure(key=key, stage=STAGE, uri=url, reason=f"file is gone: {url}")
                continue
            if self.captions_only:
                sample = Sample(key=key, source_kind=self.kind, meta={"source_uri": url})
                caption_from_bytes(sample, io.read_bytes(url), f"caption file {rel!r}")
                yield sample
                continue
            sample = Sample(key=key, source_kind=self.kind, ref=ImageRef(uri=url))
            base = url[: url.rfind(".")]
            with contextlib.suppress(FileNotFoundError):
                caption_from_bytes(sample, io.read_bytes(base + ".txt"), f"caption file {key}.txt")
            try:
                meta, warning = parse_json_sidecar(io.read_bytes(base + ".json"), f"sidecar {key}.json")
                if warning:
                    sample.warnings.append(warning)
                sample.meta = {k: json_safe(v) for k, v in meta.items()}
                if sample.caption is None and isinstance(meta.get("caption"), str):
                    sample.caption = meta["caption"].strip()
            except FileNotFoundError:
                pass
            yield sample
