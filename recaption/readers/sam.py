"""Segment Anything (SA-1B): tar shards ``sa_000000.tar`` holding ``sa_<id>.jpg`` + ``sa_<id>.json``,
or the same files extracted into folders.

The JSON's ``image`` record gives ``image_id``, ``width``, ``height`` and ``file_name``; the
``annotations`` (masks) are not needed here and only counted. An optional captions folder holds
``sa_<id>.txt`` files, the layout of PixArt's released SAM-LLaVA captions; its text becomes the
sample's caption.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from recaption import io
from recaption.readers.base import (
    Failure,
    ImageRef,
    InputShard,
    Sample,
    Source,
)
from recaption.readers.common import caption_from_bytes, parse_json_sidecar, read_tar_shard, skipped_failures
from recaption.readers.fetch import WindowReader
from recaption.readers.refs import RefError
from recaption.readers.tar import TarGroup, split_key

STAGE = "read"
SAM_KEY = re.compile(r"^sa_\d+$")
SAM_TAR = re.compile(r"^sa_\d+\.tar$")


def natural_key(s: str) -> tuple[object, ...]:
    """Sort ``sa_2`` before ``sa_10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s))


def _apply_sam_json(sample: Sample, raw: bytes, name: str) -> None:
    meta, warning = parse_json_sidecar(raw, f"SAM annotation file {name!r}")
    if warning:
        sample.warnings.append(warning)
        return
    image = meta.get("image")
    if not isinstance(image, dict):
        sample.warnings.append(f"SAM annotation file {name!r} has no 'image' record; width/height unknown")
        return
    for k in ("image_id", "file_name"):
        if k in image:
            sample.meta[f"sam_{k}"] = image[k]
    try:
        sample.width = int(image["width"])
        sample.height = int(image["height"])
    except (KeyError, TypeError, ValueError):
        sample.warnings.append(f"SAM annotation file {name!r}: 'image' record lacks a valid width/height")
    anns = meta.get("annotations")
    if isinstance(anns, list):
        sample.meta["sam_annotations"] = len(anns)


@dataclass
class SamSource(Source):
    """SA-1B tars (``tars``) or extracted folders (``images``, chunked by ``shard_size``)."""

    root: str
    tars: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    shard_size: int = 1000
    captions_dir: str | None = None
    # (file, reason, severity) for the folder's other files and links: reported by shard 0
    skipped: tuple[tuple[str, str, str], ...] = ()
    # extracted folders: the sa_<id>.json annotation files the listing found (None: not listed)
    annotations: frozenset[str] | None = None
    kind = "sam"

    def shards(self) -> list[InputShard]:
        if self.tars:
            return [InputShard(index=i, uri=u, kind=self.kind) for i, u in enumerate(self.tars)]
        chunks = [self.images[i : i + self.shard_size] for i in range(0, len(self.images), self.shard_size)]
        return [
            InputShard(index=i, uri=self.root, files=c, kind=self.kind, companions=self._companions(c))
            for i, c in enumerate(chunks)
        ]

    def _companions(self, chunk: tuple[str, ...]) -> tuple[str, ...] | None:
        """The annotation files beside ``chunk``'s images (the ``.json`` read for each): recorded,
        so one added after the run redoes the shard (:mod:`recaption.shards.identity`)."""
        if self.annotations is None:
            return None
        return tuple(a for f in chunk if (a := f[: f.rfind(".")] + ".json") in self.annotations)

    def _caption(self, sample: Sample) -> None:
        if not self.captions_dir:
            return
        url = io.join(self.captions_dir, f"{sample.key.rsplit('/', 1)[-1]}.txt")
        try:
            raw = io.read_bytes(url)
        except FileNotFoundError:
            sample.warnings.append(f"no caption file {url}")
            return
        caption_from_bytes(sample, raw, f"caption file {url!r}")

    def read_shard(self, shard: InputShard) -> Iterator[Sample | Failure]:
        if shard.index == 0:
            yield from skipped_failures(self.root, self.skipped, STAGE)
        if shard.files:
            yield from self._read_folder_chunk(shard)
            return
        yield from read_tar_shard(shard, lambda group: self._tar_sample(shard, group), STAGE)

    def _tar_sample(self, shard: InputShard, g: TarGroup) -> Sample | Failure:
        img = g.files.get("jpg") or g.files.get("jpeg")
        if img is None:
            return Failure(
                key=g.key,
                stage=STAGE,
                uri=shard.uri,
                member=next(iter(g.files.values())).name if g.files else "",
                reason=f"no .jpg for SAM key {g.key!r} (found: {', '.join(sorted(g.files)) or 'nothing'})",
            )
        sample = Sample(
            key=g.key.rsplit("/", 1)[-1],
            source_kind=self.kind,
            ref=ImageRef(uri=shard.uri, member=img.name, offset=img.offset, length=img.size),
            data=img.data,
        )
        if "json" in g.files:
            _apply_sam_json(sample, g.files["json"].data, g.files["json"].name)
        else:
            sample.warnings.append(f"no annotation file {g.key}.json beside the image")
        if "txt" in g.files:
            caption_from_bytes(sample, g.files["txt"].data, f"caption {g.files['txt'].name!r}")
        self._caption(sample)
        return sample

    def _read_folder_chunk(self, shard: InputShard) -> Iterator[Sample | Failure]:
        # annotation files are read a window ahead; images (lazy) only once a consumer asks for one,
        # so caption-only passes never touch them
        seq = [u for url in shard.files for u in (url, url[: url.rfind(".")] + ".json")]
        lazy = frozenset(range(0, len(seq), 2))
        with WindowReader(seq, lazy=lazy) as reader:
            for i, url in enumerate(shard.files):
                key, _ = split_key(io.basename(url))
                sample = Sample(
                    key=key, source_kind=self.kind, ref=ImageRef(uri=url), fetch=_getter(reader, 2 * i, url)
                )
                json_url = seq[2 * i + 1]
                try:
                    _apply_sam_json(sample, reader.get(2 * i + 1), io.basename(json_url))
                except FileNotFoundError:
                    sample.warnings.append(f"no annotation file {io.basename(json_url)} beside the image")
                self._caption(sample)
                yield sample


def _getter(reader: WindowReader, i: int, url: str) -> Callable[[], bytes]:
    def fetch() -> bytes:
        try:
            return reader.get(i)
        except FileNotFoundError:
            raise RefError(f"image file is gone: {url}") from None

    return fetch
