"""Feature shards for the PixArt tests: latents from a tiny VAE, T5-like features from a seeded RNG."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from recaption.encoder import schema as S
from recaption.encoder.tiny_vae import build_tiny_vae
from recaption.encoder.vae import ImageEncoder, VaeConfig

HIDDEN = 16
MAX_LENGTH = 12
# (width, height) of the test images: several buckets, some sharing one, a ratio of exactly 4.
SIZES = [
    (400, 300),
    (300, 400),
    (256, 256),
    (402, 301),
    (640, 360),
    (360, 640),
    (500, 500),
    (200, 800),
    (1000, 180),
]


@dataclass
class FeatureFolder:
    """What was written, for the tests to compare against."""

    url: str
    files: list[str]
    keys: list[str]
    sizes: dict[str, tuple[int, int]]  # key -> (width, height)
    texts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # field -> key -> (len, hidden) f32
    captions: dict[str, dict[str, str]] = field(default_factory=dict)
    latents: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # res -> key -> (8, h, w) f32
    metadata: S.FeatureMetadata | None = None


def make_metadata(
    encoder: ImageEncoder, *, t5_model: str = "tiny-t5", max_length: int = MAX_LENGTH, fields=("dense", "raw")
) -> S.FeatureMetadata:
    return S.FeatureMetadata(
        preset="alpha",
        text=S.TextMeta(t5_model, None, HIDDEN, "float16", max_length, True, list(fields)),
        image=encoder.metadata(),
    )


def write_features(
    folder: Path,
    encoder: ImageEncoder,
    *,
    shards: list[list[int]],
    keys: list[str] | None = None,
    sizes: list[tuple[int, int]] = SIZES,
    metadata: S.FeatureMetadata | None = None,
    row_group_rows: int | None = 3,
    seed: int = 0,
) -> FeatureFolder:
    """Encode noise images of ``sizes`` and write them as ``part-{i:05d}.parquet`` per shard."""
    rng = np.random.default_rng(seed)
    keys = keys or [f"img{i:03d}" for i in range(len(sizes))]
    used = sorted({i for members in shards for i in members})
    images = [
        Image.fromarray(rng.integers(0, 256, size=(sizes[i][1], sizes[i][0], 3), dtype=np.uint8))
        for i in used
    ]
    encoded = dict(zip(used, encoder.encode_all(images), strict=True))
    meta = metadata or make_metadata(encoder)
    out = FeatureFolder(
        url=str(folder), files=[], keys=keys, sizes=dict(zip(keys, sizes, strict=True)), metadata=meta
    )
    fields = meta.text.fields if meta.text else []
    for f in fields:
        out.texts[f] = {}
        out.captions[f] = {}
    for r in encoder.config.resolutions:
        out.latents[r] = {}
    folder.mkdir(parents=True, exist_ok=True)
    schema = S.feature_schema(metadata=meta)
    for si, members in enumerate(shards):
        rows = []
        for i in members:
            key = keys[i]
            w, h = sizes[i]
            row = {
                "key": key,
                "image_uri": f"/images/{key}.jpg",
                "image_member": "",
                "image_offset": -1,
                "image_length": -1,
                "width": w,
                "height": h,
            }
            for fi, f in enumerate(fields):
                n = int(rng.integers(1, MAX_LENGTH + 1)) if (i + fi) % 4 else MAX_LENGTH
                feats = rng.standard_normal((n, HIDDEN)).astype(np.float16)
                text = f"{f} caption of {key}"
                out.texts[f][key] = feats.astype(np.float32)
                out.captions[f][key] = text
                row.update(S.text_row(f, feats, text=text, truncated=n == MAX_LENGTH))
            for r, res in encoded[i].items():
                row.update(res.row())
                out.latents[r][key] = res.as_float32()
            rows.append(row)
        table = pa.Table.from_pylist(rows, schema=schema)
        path = folder / f"part-{si:05d}.parquet"
        S.write_feature_table(str(path), table, S.ShardSizePolicy(max_rows=row_group_rows))
        out.files.append(str(path))
    return out


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_vae(str(tmp_path_factory.mktemp("tiny_vae")))


@pytest.fixture(scope="session")
def encoder(tiny_vae_dir: str) -> ImageEncoder:
    return ImageEncoder(VaeConfig(model=tiny_vae_dir, resolutions=(256, 512), preprocess_threads=2)).load()


@pytest.fixture(scope="session")
def features(tmp_path_factory: pytest.TempPathFactory, encoder: ImageEncoder) -> FeatureFolder:
    """9 images in two shards (5 + 4 rows), row groups of 3, at 256 and 512."""
    folder = tmp_path_factory.mktemp("features")
    return write_features(folder, encoder, shards=[[0, 1, 2, 3, 4], [5, 6, 7, 8]])
