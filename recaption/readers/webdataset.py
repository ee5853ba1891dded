"""img2dataset's webdataset output: ``00000.tar`` holding ``<key>.jpg``, ``<key>.txt``, ``<key>.json``.

img2dataset also writes ``00000.parquet`` (metadata, no images) and ``00000_stats.json`` beside each
tar; only the tars are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from recaption.images.formats import unsupported_image_reason
from recaption.readers.base import (
    Failure,
    ImageRef,
    InputShard,
    Sample,
    Source,
)
from recaption.readers.common import (
    caption_from_bytes,
    json_safe,
    parse_json_sidecar,
    read_tar_shard,
    skipped_failures,
)
from recaption.readers.tar import TarGroup

STAGE = "read"


@dataclass
class WebDatasetSource(Source):
    """A set of webdataset tar shards; shard i is the i-th tar in sorted order."""

    root: str
    tars: tuple[str, ...]
    # (file, reason, severity) for the folder's other files and links: reported by shard 0
    skipped: tuple[tuple[str, str, str], ...] = ()
    kind = "webdataset"

    def shards(self) -> list[InputShard]:
        return [InputShard(index=i, uri=u, kind=self.kind) for i, u in enumerate(self.tars)]

    def _sample(self, shard: InputShard, group: TarGroup) -> Sample | Failure:
        img = group.image()
        member = next(iter(group.files.values())).name if group.files else group.key
        if img is None:
            exts = ", ".join(sorted(group.files)) or "nothing"
            unsupported = next(
                (r for r in (unsupported_image_reason(e.rsplit(".", 1)[-1]) for e in group.files) if r), None
            )
            return Failure(
                key=group.key,
                stage=STAGE,
                reason=f"{unsupported} (key {group.key!r})"
                if unsupported
                else f"no image file for key {group.key!r} (found: {exts}; an image is any format "
                "Pillow decodes: .jpg, .png, .webp, .tif, ...)",
                uri=shard.uri,
                member=member,
            )
        _, m = img
        sample = Sample(
            key=group.key,
            source_kind=self.kind,
            ref=ImageRef(uri=shard.uri, member=m.name, offset=m.offset, length=m.size),
            data=m.data,
        )
        if "txt" in group.files:
            caption_from_bytes(sample, group.files["txt"].data, f"caption {group.files['txt'].name!r}")
        if "json" in group.files:
            meta, warning = parse_json_sidecar(
                group.files["json"].data, f"sidecar {group.files['json'].name!r}"
            )
            if warning:
                sample.warnings.append(warning)
            sample.meta = {k: json_safe(v) for k, v in meta.items()}
            if sample.caption is None and isinstance(meta.get("caption"), str):
                sample.caption = meta["caption"].strip()
            if isinstance(meta.get("key"), str) and meta["key"]:
                sample.meta["img2dataset_key"] = meta["key"]
        return sample

    def read_shard(self, shard: InputShard) -> Iterator[Sample | Failure]:
        if shard.index == 0:
            yield from skipped_failures(self.root, self.skipped, STAGE)
        yield from read_tar_shard(shard, lambda group: self._sample(shard, group), STAGE)
