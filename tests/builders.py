"""Builders for test inputs: images in every mode, SA-1B tars, img2dataset webdataset/parquet/files
output, and the bad inputs a real collection contains. Real photos from ``../shared/data`` are used
where present; generated images otherwise."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the calling test with the reason."""
    import pytest

    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real test data not available: {p} (../shared/data is only on the team's machines)")
    return p


def real_photos() -> list[Path]:
    d = SHARED_DATA / "sam"
    return sorted(d.glob("*.jpg")) if d.exists() else []


def image_bytes(
    w: int = 64, h: int = 48, fmt: str = "JPEG", mode: str = "RGB", seed: int = 0, **save: Any
) -> bytes:
    """A small image with structure (a gradient plus noise) in the given mode and format."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)
    base = np.clip(base.astype(int) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(base, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def truncated_jpeg(w: int = 256, h: int = 192) -> bytes:
    data = image_bytes(w, h)
    return data[: len(data) // 2]


def add_tar_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tf.addfile(info, io.BytesIO(data))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = {".gz": "w:gz", ".tgz": "w:gz", ".bz2": "w:bz2", ".xz": "w:xz"}.get(path.suffix, "w")
    with tarfile.open(path, mode) as tf:  # type: ignore[call-overload]
        for name, data in members:
            add_tar_member(tf, name, data)
    return path


def sam_json(image_id: int, w: int, h: int, n_ann: int = 3) -> bytes:
    return json.dumps(
        {
            "image": {"image_id": image_id, "width": w, "height": h, "file_name": f"sa_{image_id}.jpg"},
            "annotations": [{"id": i, "area": 10 * i} for i in range(n_ann)],
        }
    ).encode()


def sam_member_pairs(start_id: int, n: int, size: tuple[int, int] = (96, 64)) -> list[tuple[str, bytes]]:
    photos = real_photos()
    out = []
    for i in range(start_id, start_id + n):
        if photos:
            img = Image.open(photos[i % len(photos)]).convert("RGB")
            img.thumbnail((160, 160))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=85)
            data, (w, h) = buf.getvalue(), img.size
        else:
            w, h = size
            data = image_bytes(w, h, seed=i)
        out += [(f"sa_{i}.jpg", data), (f"sa_{i}.json", sam_json(i, w, h))]
    return out


def wds_sample(
    key: str,
    caption: str | bytes | None,
    seed: int = 0,
    meta: dict | None = None,
    img: bytes | None = None,
    ext: str = "jpg",
) -> list[tuple[str, bytes]]:
    out = [(f"{key}.{ext}", img if img is not None else image_bytes(64, 48, seed=seed))]
    if caption is not None:
        out.append((f"{key}.txt", caption if isinstance(caption, bytes) else caption.encode()))
    m = {"key": key, "caption": caption if isinstance(caption, str) else None, "status": "success"}
    m.update(meta or {})
    out.append((f"{key}.json", json.dumps(m).encode()))
    return out


def write_img2dataset_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    """img2dataset's parquet output: key, jpg (bytes), txt, plus status/error_message/width/height."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("key", pa.string()),
            ("url", pa.string()),
            ("txt", pa.string()),
            ("jpg", pa.binary()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("status", pa.string()),
            ("error_message", pa.string()),
        ]
    )
    full = [{k: r.get(k) for k in schema.names} for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(full, schema=schema), path, row_group_size=4)
    return path
