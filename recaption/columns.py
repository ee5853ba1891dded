"""Columns every per-sample output shares: the key, where the image is, its size, the raw caption.

Caption, index and feature shards all start with these, so any of them can be joined on ``key``
and any later stage can reopen the image from ``image_*``.
"""

from __future__ import annotations

import json
from typing import Any

from recaption.readers.base import Sample

SAMPLE_COLUMNS = (
    "key",
    "source_kind",
    "image_uri",
    "image_member",
    "image_offset",
    "image_length",
    "width",
    "height",
    "raw_caption",
    "meta",
)


def sample_fields() -> list[Any]:
    import pyarrow as pa

    return [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source_kind", pa.string()),
        pa.field("image_uri", pa.string()),
        pa.field("image_member", pa.string()),
        pa.field("image_offset", pa.int64()),
        pa.field("image_length", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("raw_caption", pa.string()),
        pa.field("meta", pa.string()),  # JSON: the source's metadata for this sample
    ]


def sample_row(sample: Sample) -> dict[str, Any]:
    ref = sample.ref
    return {
        "key": sample.key,
        "source_kind": sample.source_kind,
        "image_uri": ref.uri if ref else None,
        "image_member": ref.member if ref else None,
        "image_offset": ref.offset if ref else None,
        "image_length": ref.length if ref else None,
        "width": sample.width,
        "height": sample.height,
        "raw_caption": sample.caption,
        "meta": json.dumps(sample.meta, sort_keys=True, ensure_ascii=False, default=str)
        if sample.meta
        else None,
    }
