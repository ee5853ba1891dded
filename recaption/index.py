"""The index stage: every sample of a source, decoded once, as one parquet row.

``recaption index SOURCE OUTPUT`` writes ``part-{i:05d}.parquet`` per input shard with the
sample's key, image reference, decoded size, aspect ratio, format and raw caption; every sample
that does not decode gets a manifest row instead. It is the cheapest full pass over a collection
(CPU only) and what the other stages' shard machinery is tested with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recaption.columns import sample_fields, sample_row
from recaption.images.decode import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    DecodeError,
    decode_image,
    extreme_aspect_reason,
    is_extreme_aspect,
)
from recaption.readers.base import Failure, InputShard, Sample, Source
from recaption.shards.writer import ShardOutput
from recaption.stage import Resources, Stage


@dataclass
class IndexStage(Stage):
    """Decode every image of ``source`` and record what it is."""

    source: Source
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    batch_rows: int = 256
    name = "index"

    def resources(self) -> Resources:
        return Resources(num_cpus=1)

    def schema(self) -> Any:
        import pyarrow as pa

        return pa.schema(
            [
                *sample_fields(),
                pa.field("aspect_ratio", pa.float32()),  # height / width, PixArt's convention
                # beyond 1:4..4:1: PixArt drops the tall ones, crops the wide ones hard
                pa.field("extreme_aspect", pa.bool_()),
                pa.field("format", pa.string()),
                pa.field("mode", pa.string()),
            ]
        )

    def fingerprint(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": {"kind": self.source.kind, "root": self.source.root},
            "max_pixels": self.max_pixels,
            "min_side": self.min_side,
        }
        # Which caption manifests a folder has is input, not configuration: one that appears,
        # changes or goes redoes the shards it captions (recaption.shards.identity). The option
        # choosing their text column is configuration (absent when unset: older outputs match).
        from recaption.readers.folder import FolderSource

        if isinstance(self.source, FolderSource) and self.source.text_column:
            out["source"]["text_column"] = self.source.text_column
        return out

    def recorded_fingerprint(self, old: dict[str, Any]) -> dict[str, Any]:
        # outputs made while the manifests' names were recorded here still match
        source = old.get("source")
        if isinstance(source, dict) and "captions_from" in source:
            return {**old, "source": {k: v for k, v in source.items() if k != "captions_from"}}
        return old

    def shards(self) -> list[InputShard]:
        return self.source.shards()

    def process_shard(self, shard: InputShard, out: ShardOutput) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        for item in self.source.read_shard(shard):
            if isinstance(item, Failure):
                out.fail(item)
                continue
            s: Sample = item
            for w in s.warnings:
                out.warn_sample(s, w)
            row = sample_row(s)
            if self.source.has_images:
                try:
                    # Draft decoding reads the whole stream (catches truncation) at a fraction of the cost.
                    d = decode_image(
                        s.image_bytes(),
                        max_pixels=self.max_pixels,
                        min_side=self.min_side,
                        draft_min_size=(64, 64),
                    )
                except DecodeError as e:
                    out.fail_sample(s, e.reason)
                    continue
                except Exception as e:
                    out.fail_sample(s, getattr(e, "reason", f"cannot read image: {type(e).__name__}: {e}"))
                    continue
                extreme = is_extreme_aspect(d.width, d.height)
                if extreme:
                    out.warn_sample(
                        s,
                        f"{extreme_aspect_reason(d.width, d.height)} (kept here, flagged)",
                    )
                    out.count("extreme_aspect")
                row.update(
                    width=d.width,
                    height=d.height,
                    aspect_ratio=d.height / d.width,
                    extreme_aspect=extreme,
                    format=d.format,
                    mode=d.mode,
                )
            rows.append(row)
            if len(rows) >= self.batch_rows:
                out.progress(len(rows))
                out.write(rows)
                rows = []
        out.write(rows)
        return {}
