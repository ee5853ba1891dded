"""``encode --square`` / ``encode.square`` and ``--vae-resize stretch`` (issue 11, items 1 and 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from recaption.encoder import buckets as B
from recaption.encoder import schema as S
from recaption.encoder.vae import ImageEncoder, VaeConfig
from recaption.errors import ConfigError


def noise(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def test_square_latents_are_single_scale_trainings_crop(tiny_vae_dir: str) -> None:
    """The square latents of a multi-scale run equal a single-scale run's: ``default_train``'s
    bilinear shorter-side resize and centre crop, next to the buckets."""
    both = ImageEncoder(VaeConfig(model=tiny_vae_dir, resolutions=(256,), square=True, preprocess_threads=0))
    single = ImageEncoder(
        VaeConfig(model=tiny_vae_dir, resolutions=(256,), multiscale=False, preprocess_threads=0)
    )
    imgs = [noise(500, 300, 1), noise(300, 420, 2)]
    (a, b) = both.encode_all_square(imgs)
    ref = single.encode(imgs, 256)
    for got, want in zip((a[256], b[256]), ref, strict=True):
        assert got.latent.shape == (8, 32, 32)
        np.testing.assert_array_equal(got.latent, want.latent)
        assert got.crop == want.crop
    # the buckets are still the multi-scale ones
    (ms,) = both.encode([imgs[0]], 256)
    assert (ms.bucket.height, ms.bucket.width) == (192, 320)
    # no square latents asked for: none computed
    plain = ImageEncoder(VaeConfig(model=tiny_vae_dir, resolutions=(256,), preprocess_threads=0))
    assert plain.encode_all_square(imgs) == [{}, {}]
    assert both.metadata().square is True and plain.metadata().square is False


def test_square_columns_in_the_schema_round_trip(tiny_vae_dir: str) -> None:
    import pyarrow as pa

    enc = ImageEncoder(
        VaeConfig(model=tiny_vae_dir, resolutions=(256, 512), square=True, preprocess_threads=0)
    )
    meta = S.FeatureMetadata(preset="alpha", image=enc.metadata())
    schema = S.feature_schema(metadata=meta)
    for r in (256, 512):
        assert S.square_column(r) in schema.names and S.square_column(r, "_crop") in schema.names
        assert S.square_column(r) in S.tensor_columns(schema)  # written uncompressed like the others
    img = noise(400, 300, 3)
    row = {"key": "k", "image_uri": "x", "image_member": "", "image_offset": -1, "image_length": -1}
    row |= {"width": 400, "height": 300}
    for res in enc.encode_all([img])[0].values():
        row |= res.row()
    for res in enc.encode_all_square([img])[0].values():
        row |= res.square_row()
    table = pa.Table.from_pylist([row], schema=schema)
    assert S.validate(table, deep=True).image.square is True  # type: ignore[union-attr]
    back = S.unpack_tensor(table.column(S.square_column(512))[0].as_py(), (8, 64, 64), "float16")
    assert back.shape == (8, 64, 64)
    with pytest.raises(S.FeatureSchemaError, match="vae_256_square"):
        S.validate(table.drop_columns([S.square_column(256)]))
    short = table.set_column(
        table.schema.get_field_index(S.square_column(256)),
        S.square_column(256),
        pa.array([b"\0" * 10], type=pa.binary()),
    )
    with pytest.raises(S.FeatureSchemaError, match="vae_256_square has 10 bytes"):
        S.validate(short, deep=True)
    # files written before these options read as crop, without square columns
    old = json.loads(meta.to_json())
    del old["image"]["square"], old["image"]["resize"]
    again = S.FeatureMetadata.from_json(json.dumps(old))
    assert again.image is not None and (again.image.square, again.image.resize) == (False, "crop")


def test_stretch_reproduces_pixarts_extractor_resize(tiny_vae_dir: str) -> None:
    """``tools/extract_features.py --multi_scale``: ``T.Resize(closest_size, BICUBIC)`` straight to
    the bucket (PixArt-alpha @d16df1f ``DatasetMS.__getitem__``, PixArt-sigma @207537a
    ``DatasetExtract``), then a ``CenterCrop`` of the same size that cuts nothing."""
    enc = ImageEncoder(
        VaeConfig(model=tiny_vae_dir, resolutions=(256,), resize="stretch", preprocess_threads=0)
    )
    crop = ImageEncoder(VaeConfig(model=tiny_vae_dir, resolutions=(256,), preprocess_threads=0))
    img = noise(500, 310, 4)  # ratio 0.62: bucket 0.6 (192 x 320), not the image's own shape
    size = B.closest_bucket(310, 500, 256)
    want = img.resize((size.width, size.height), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(enc.preprocess(img, 256), np.asarray(want))
    assert not np.array_equal(crop.preprocess(img, 256), np.asarray(want))  # training crops instead
    (r,) = enc.encode([img], 256)
    assert r.crop.as_list() == [0, 0, size.height, size.width]
    assert (r.crop.resized_h, r.crop.resized_w) == (size.height, size.width)
    assert enc.metadata().resize == "stretch"
    with pytest.raises(ConfigError, match="--vae-resize"):
        VaeConfig(resize="squash")


def test_square_and_stretch_from_the_cli_flags_and_the_pipeline_file() -> None:
    from recaption.pipeline.build import encode_stage, section_from_flags
    from recaption.pipeline.config import EncodeConfig, load_config

    section = section_from_flags(EncodeConfig, {"square": True, "vae_resize": "stretch"})
    stage = encode_stage(section, "/nowhere")
    assert stage.image is not None and stage.image.square and stage.image.resize == "stretch"
    assert stage.fingerprint()["image"]["square"] is True
    assert stage.fingerprint()["image"]["resize"] == "stretch"
    cfg = load_config({"source": {"path": "/in"}, "output": "/out", "encode": {"square": True}})
    assert encode_stage(cfg.encode, "/nowhere").image.square is True  # type: ignore[union-attr]
    # a run recorded before these options resumes: its fingerprint has neither key
    plain = encode_stage(EncodeConfig(), "/nowhere").fingerprint()["image"]
    assert "square" not in plain and "resize" not in plain
    with pytest.raises(ConfigError, match="--vae-resize"):
        section_from_flags(EncodeConfig, {"vae_resize": "squash"})
