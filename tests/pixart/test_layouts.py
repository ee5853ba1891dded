"""Every PixArt config trains from ``export-pixart``'s output of a tiny run (issue 11).

A tiny run: images on disk and in a tar (a plain JPEG, a grayscale JPEG, an EXIF-rotated JPEG, a
transparent PNG, a very wide and a ratio-4 JPEG) with captions, encoded by the encode stage with the
tiny T5 and the tiny VAE (``--square``: bucketed and square latents), exported, then read by
replicas of PixArt's own dataset classes (:mod:`tests.pixart.pixart_loaders`, transcribed from
PixArt's source with the commits named there) for: α multi-scale 256/512, α single-scale 256/512,
Σ multi-scale from features and from images, Σ single-scale 256, Σ with and without an alternate
caption. Every item must load, and what it loads must be what was encoded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from recaption.encoder import schema as S
from recaption.encoder.stage import EncodeStage, encode_configs
from recaption.encoder.vae import ImageEncoder
from recaption.images.decode import decode_image
from recaption.pixart.export import export_pixart
from recaption.runner import run_local
from tests.builders import image_bytes, write_tar

from . import pixart_loaders as P

RESOLUTIONS = (256, 512)


def _exif_rotated_jpeg(w: int, h: int, seed: int) -> bytes:
    import io

    img = Image.open(io.BytesIO(image_bytes(w, h, seed=seed)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: the oriented size is h x w
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def _transparent_png(w: int, h: int, seed: int) -> bytes:
    import io

    rgb = np.asarray(Image.open(io.BytesIO(image_bytes(w, h, seed=seed, fmt="PNG"))))
    alpha = np.zeros((h, w), dtype=np.uint8)
    alpha[:, : w // 2] = 255  # the right half fully transparent: composited on white, not dropped
    buf = io.BytesIO()
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_captions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A caption shard over local files and tar members (what ``recaption caption`` would write)."""
    d = tmp_path_factory.mktemp("layouts")
    imgs = d / "images"
    imgs.mkdir()
    files = {
        "plain": ("plain.jpg", image_bytes(400, 300, seed=1)),
        "gray": ("gray.jpg", image_bytes(300, 400, mode="L", seed=2)),
        "rotated": ("rotated.jpg", _exif_rotated_jpeg(640, 360, seed=3)),
        "alpha": ("alpha.png", _transparent_png(500, 500, seed=4)),
    }
    rows = []
    for key, (name, data) in files.items():
        (imgs / name).write_bytes(data)
        rows.append({"key": f"local/{key}", "image_uri": str(imgs / name), "image_member": "", "data": data})
    members = [("wide.jpg", image_bytes(1000, 180, seed=5)), ("tall.jpg", image_bytes(200, 800, seed=6))]
    write_tar(d / "shard.tar", members)
    for name, data in members:
        rows.append(
            {"key": f"tar/{name[:-4]}", "image_uri": str(d / "shard.tar"), "image_member": name, "data": data}
        )
    table = []
    for i, r in enumerate(rows):
        dec = decode_image(r.pop("data"))
        table.append(
            r
            | {
                "image_offset": -1,
                "image_length": -1,
                "width": dec.width,
                "height": dec.height,
                "dense_caption": f"a dense caption number {i} of a red car near a lake",
                "raw_caption": f"raw alt text {i}",
            }
        )
    caps = d / "captions"
    caps.mkdir()
    pq.write_table(pa.Table.from_pylist(table), caps / "part-00000.parquet")
    return caps


def _run(captions: Path, out: Path, preset: str, t5: str, vae: str) -> str:
    text, image = encode_configs(
        preset,
        t5_model=t5,
        vae_model=vae,
        resolutions=RESOLUTIONS,
        device="cpu",
        t5_hidden_size=32,
        square=True,
    )
    stage = EncodeStage(
        captions=str(captions),
        text=text,
        image=image,
        fields=("dense", "raw"),
        preset=preset,
        expected_shards=(0,),
    )
    assert run_local(stage, str(out), progress=False).ok
    return str(out)


@pytest.fixture(scope="module")
def alpha_features(tiny_captions, tiny_t5_dir, tiny_vae_model_dir, tmp_path_factory) -> str:
    return _run(tiny_captions, tmp_path_factory.mktemp("fa") / "f", "alpha", tiny_t5_dir, tiny_vae_model_dir)


@pytest.fixture(scope="module")
def tiny_sdxl_vae_dir(tmp_path_factory) -> str:
    """The tiny VAE standing in for the SDXL VAE: its scaling factor is recorded, so it is SDXL's."""
    from recaption.encoder.tiny_vae import build_tiny_vae

    return build_tiny_vae(str(tmp_path_factory.mktemp("tiny_sdxl_vae")), scaling_factor=0.13025)


@pytest.fixture(scope="module")
def sigma_features(tiny_captions, tiny_t5_dir, tiny_sdxl_vae_dir, tmp_path_factory) -> str:
    return _run(tiny_captions, tmp_path_factory.mktemp("fs") / "f", "sigma", tiny_t5_dir, tiny_sdxl_vae_dir)


def stored(features: str) -> tuple[S.FeatureMetadata, dict[str, dict]]:
    """What the encode stage wrote, by key: T5 features per field, latents per resolution."""
    url = os.path.join(features, "part-00000.parquet")
    meta = S.read_metadata(url)
    assert meta.text is not None and meta.image is not None and meta.image.square
    out: dict[str, dict] = {}
    for row in pq.read_table(url).to_pylist():
        hidden = meta.text.hidden_size
        rec: dict = {"row": row}
        for f in ("dense", "raw"):
            rec[f] = S.unpack_tensor(
                row[S.t5_column(f)], (row[S.t5_column(f, "_len")], hidden), meta.text.dtype
            )
        for r in RESOLUTIONS:
            h, w = row[S.vae_column(r, "_h")], row[S.vae_column(r, "_w")]
            rec[("ms", r)] = S.unpack_tensor(row[S.vae_column(r)], (8, h // 8, w // 8), meta.image.dtype)
            rec[("sq", r)] = S.unpack_tensor(row[S.square_column(r)], (8, r // 8, r // 8), meta.image.dtype)
        out[row["key"]] = rec
    return meta, out


def check_text(txt_fea, mask, want: np.ndarray, max_length: int, dtype, mask_dtype) -> None:
    """PixArt's padding rule: real tokens, then the last one repeated; mask 1 then 0, (1, 1, L)."""
    n = want.shape[0]
    assert txt_fea.dtype == dtype
    assert tuple(txt_fea.shape) == (1, max_length, want.shape[1])
    np.testing.assert_array_equal(txt_fea[0, :n].float().numpy(), want.astype(np.float32))
    np.testing.assert_array_equal(
        txt_fea[0, n:].float().numpy(), np.repeat(want[-1:].astype(np.float32), max_length - n, axis=0)
    )
    assert mask.dtype == mask_dtype
    assert tuple(mask.shape) == (1, 1, max_length)
    assert mask[0, 0].tolist() == [1] * n + [0] * (max_length - n)


def check_latent(loaded: tuple[torch.Tensor, torch.Tensor], want: np.ndarray, dtype) -> None:
    mean, std = loaded
    assert mean.dtype == dtype and std.dtype == dtype
    np.testing.assert_array_equal(torch.cat([mean, std]).float().numpy(), want.astype(np.float32))


# -- PixArt-α ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def alpha_export(alpha_features, tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("pa") / "InternData")
    return dest, export_pixart(alpha_features, dest, layouts=("internal",))


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_alpha_multiscale_loads_every_item(alpha_features, alpha_export, resolution) -> None:
    _, summary = alpha_export
    meta, want = stored(alpha_features)
    hint = next(
        h
        for h in summary.config_hints
        if h["data"]["type"] == "InternalDataMS" and h["image_size"] == resolution
    )
    ds = P.InternalDataMS(
        hint["data"]["root"],
        hint["data"]["image_list_json"],
        resolution=resolution,
        load_vae_feat=hint["data"]["load_vae_feat"],
        max_length=hint["model_max_length"],
        aspect_ratio_type=hint["aspect_ratio_type"],
    )
    assert len(ds.meta_data_clean) == len(want) == 6
    for i, item in enumerate(ds.meta_data_clean):
        img, txt_fea, mask, info = ds.getdata(i)
        rec = want[item["key"]]
        row = rec["row"]
        assert [row[S.vae_column(resolution, "_h")], row[S.vae_column(resolution, "_w")]] == info[
            "closest_size"
        ]
        check_latent(img, rec[("ms", resolution)], torch.float32)
        # α's InternalDataMS does not pad: the export stored the features padded, float32 + int64
        check_text(txt_fea, mask, rec["dense"], meta.text.max_length, torch.float32, torch.int64)


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_alpha_single_scale_loads_every_item(alpha_features, alpha_export, resolution) -> None:
    dest, summary = alpha_export
    meta, want = stored(alpha_features)
    hint = next(
        h
        for h in summary.config_hints
        if h["data"]["type"] == "InternalData" and h["image_size"] == resolution
    )
    assert hint["multi_scale"] is False and hint["aspect_ratio_type"] is None
    ds = P.InternalData(
        dest,
        hint["data"]["image_list_json"],
        resolution=resolution,
        load_vae_feat=True,
        max_length=hint["model_max_length"],
    )
    assert len(ds) == 6
    for i, item in enumerate(ds.meta_data_clean):
        img, txt_fea, mask, _ = ds.getdata(i)
        check_latent(img, want[item["key"]][("sq", resolution)], torch.float32)
        assert tuple(img[0].shape) == (4, resolution // 8, resolution // 8)
        check_text(
            txt_fea, mask, want[item["key"]]["dense"], meta.text.max_length, torch.float32, torch.int64
        )


# -- PixArt-Σ ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sigma_export(sigma_features, tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("ps") / "InternData")
    return dest, export_pixart(sigma_features, dest, layouts=("sigma",), alt_caption_field="raw", images=True)


def _sigma_ms(hint: dict, resolution: int) -> P.InternalDataMSSigma:
    d = hint["data"]
    return P.InternalDataMSSigma(
        d["root"],
        d["image_list_json"],
        resolution=resolution,
        load_vae_feat=d["load_vae_feat"],
        load_t5_feat=d["load_t5_feat"],
        real_prompt_ratio=hint["real_prompt_ratio"],
        max_length=hint["model_max_length"],
        aspect_ratio_type=hint["aspect_ratio_type"],
    )


def _hints(summary, dataset: str, resolution: int, load_vae_feat: bool) -> dict:
    (hint,) = [
        h
        for h in summary.config_hints
        if h["data"]["type"] == dataset
        and h["image_size"] == resolution
        and h["data"]["load_vae_feat"] is load_vae_feat
    ]
    return hint


def test_sigma_multiscale_from_features_with_an_alternate_caption(sigma_features, sigma_export) -> None:
    _, summary = sigma_export
    _, want = stored(sigma_features)
    hint = _hints(summary, "InternalDataMSSigma", 512, True)
    assert hint["real_prompt_ratio"] == 0.5 and hint["data"]["load_t5_feat"] is True
    assert hint["scale_factor"] == 0.13025 and hint["model_max_length"] == 300
    assert not summary.warnings
    ds = _sigma_ms(hint, 512)
    assert len(ds.meta_data_clean) == 6
    for i, item in enumerate(ds.meta_data_clean):
        rec = want[item["key"]]
        for real, field in ((True, "dense"), (False, "raw")):
            img, txt_fea, mask, _ = ds.getdata(i, real_prompt=real)
            check_latent(img, rec[("ms", 512)], torch.float16)  # Σ's extractor stores float16
            # stored unpadded as float16 + int16; the loader pads and casts to float16
            check_text(txt_fea, mask, rec[field], 300, torch.float16, torch.int16)
        assert item["sharegpt4v"] == rec["row"]["t5_raw_text"]


def test_sigma_stores_t5_as_its_extractor_float16_int16(sigma_export, sigma_features) -> None:
    dest, _ = sigma_export
    _, want = stored(sigma_features)
    for item in P.load_json(os.path.join(dest, "data_info.json")):
        npz = np.load(os.path.join(dest, "caption_features_new", P.replace_img_ext(item["path"], ".npz")))
        n = want[item["key"]]["dense"].shape[0]
        assert npz["caption_feature"].dtype == np.float16 and npz["caption_feature"].shape == (1, n, 32)
        assert npz["attention_mask"].dtype == np.int16 and npz["attention_mask"].shape == (1, n)


def test_sigma_multiscale_from_images_trains_on_the_encoded_pixels(
    sigma_export, sigma_features, tiny_sdxl_vae_dir
) -> None:
    """Σ's shipped configs read images (``load_vae_feat=False, load_t5_feat=False``): each image,
    through Σ's own transform, encodes to the latents the features hold."""
    from recaption.encoder.vae import VaeConfig

    dest, summary = sigma_export
    _, want = stored(sigma_features)
    assert summary.images_root == dest.replace("InternData", "InternImgs")
    enc = ImageEncoder(
        VaeConfig(preset="sdxl", model=tiny_sdxl_vae_dir, resolutions=RESOLUTIONS, device="cpu")
    ).load()
    for resolution in RESOLUTIONS:
        hint = _hints(summary, "InternalDataMSSigma", resolution, False)
        hint = hint | {"data": hint["data"] | {"load_t5_feat": False}}  # as shipped: T5 on the prompt text
        ds = _sigma_ms(hint, resolution)
        assert len(ds.meta_data_clean) == 6
        for i, item in enumerate(ds.meta_data_clean):
            img, txt, _, info = ds.getdata(i, real_prompt=True)
            assert txt == item["prompt"]
            assert tuple(img.shape) == (3, *info["closest_size"])
            pixels = ((img * 0.5 + 0.5) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            latent = enc.encode_arrays(pixels[None]).float().numpy()[0]
            np.testing.assert_allclose(latent, want[item["key"]][("ms", resolution)], atol=2e-3)


def test_images_are_the_decoded_pixels_written_or_linked(sigma_export, tiny_captions) -> None:
    dest, summary = sigma_export
    root = dest.replace("InternData", "InternImgs")
    caps = {r["key"]: r for r in pq.read_table(tiny_captions / "part-00000.parquet").to_pylist()}
    # plain RGB and grayscale files read the same through PIL: linked; the rest written as PNG
    assert summary.images == {"linked": 2, "written": 4}
    for item in P.load_json(os.path.join(dest, "data_info.json")):
        path = os.path.join(root, item["path"])
        cap = caps[item["key"]]
        if cap["image_member"]:
            data = Image.open(path)
            assert data.format == "PNG"
        elif item["key"] in ("local/plain", "local/gray"):
            assert os.path.samefile(path, cap["image_uri"])
        else:
            assert Image.open(path).format == "PNG"
        src = open(cap["image_uri"], "rb").read() if not cap["image_member"] else None  # noqa: SIM115
        if src is not None:
            np.testing.assert_array_equal(
                np.asarray(P.default_loader(path)), np.asarray(decode_image(src).image)
            )
        assert P.default_loader(path).size == (item["width"], item["height"])
    rotated = P.default_loader(os.path.join(root, "local_rotated.png"))
    assert rotated.size == (360, 640)  # EXIF applied: PixArt's loader alone would see 640x360
    alpha = np.asarray(P.default_loader(os.path.join(root, "local_alpha.png")))
    assert (alpha[:, 250:] == 255).all()  # transparent half composited on white


def test_sigma_single_scale_256(sigma_export, sigma_features) -> None:
    _, summary = sigma_export
    _, want = stored(sigma_features)
    hint = _hints(summary, "InternalDataSigma", 256, True)
    assert hint["pixart_config"] == "PixArt_sigma_xl2_img256_internal.py" and hint["shipped"]
    d = hint["data"]
    ds = P.InternalDataSigma(
        d["root"], d["image_list_json"], resolution=256, load_vae_feat=True, load_t5_feat=d["load_t5_feat"],
        real_prompt_ratio=hint["real_prompt_ratio"], max_length=hint["model_max_length"],
    )  # fmt: skip
    assert len(ds) == 6
    for i, item in enumerate(ds.meta_data_clean):
        rec = want[item["key"]]
        img, txt_fea, mask, _ = ds.getdata(i, real_prompt=True)
        check_latent(img, rec[("sq", 256)], torch.float16)
        check_text(txt_fea, mask, rec["dense"], 300, torch.float16, torch.int16)
    # and from the image, through default_train (as the shipped config: load_vae_feat=False)
    ds = P.InternalDataSigma(d["root"], d["image_list_json"], transform=P.default_train(256), resolution=256)
    img, txt, _, _ = ds.getdata(0, real_prompt=True)
    assert tuple(img.shape) == (3, 256, 256) and txt == ds.meta_data_clean[0]["prompt"]


def test_sigma_without_an_alternate_caption(sigma_features, tmp_path) -> None:
    dest = str(tmp_path / "InternData")
    summary = export_pixart(sigma_features, dest, layouts=("sigma",))
    (warning,) = summary.warnings
    assert "real_prompt_ratio=1.0" in warning and "\n" not in warning
    hint = _hints(summary, "InternalDataMSSigma", 512, True)
    assert hint["real_prompt_ratio"] == 1.0
    assert not os.path.exists(os.path.join(dest, "sharegpt4v_caption_features_new"))
    ds = _sigma_ms(hint, 512)
    for i in range(len(ds.meta_data_clean)):
        _, txt_fea, _, _ = ds.getdata(i)  # random.random() < 1.0: always the real prompt
        assert txt_fea.shape[1] == 300
    # what Σ's shipped real_prompt_ratio=0.5 does with this export: the dataset cannot be built
    with pytest.raises(AssertionError):
        _sigma_ms(hint | {"real_prompt_ratio": 0.5}, 512)


def test_cli_export_flags_and_one_line_warning(sigma_features, tmp_path) -> None:
    from typer.testing import CliRunner

    from recaption.cli import app

    dest = tmp_path / "InternData"
    r = CliRunner().invoke(
        app, ["export-pixart", sigma_features, str(dest), "--layouts", "sigma", "--compress", "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["warnings"]) == 1 and out["config_hint"]["real_prompt_ratio"] == 1.0
    with np.load(next((dest / "caption_features_new").iterdir())) as z:
        assert z["caption_feature"].dtype == np.float16
    with open(next((dest / "caption_features_new").iterdir()), "rb") as f:
        import zipfile

        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zipfile.ZipFile(f).infolist())


def test_a_sample_whose_image_cannot_be_exported_is_skipped_with_its_reason(tmp_path, encoder) -> None:
    """Bad input never kills the export: a missing, corrupt or changed image leaves its sample out
    (no files, not in data_info.json) with a reason; the others are exported."""
    from .conftest import SIZES, write_features

    feats = write_features(tmp_path / "f", encoder, shards=[[0, 1, 2, 3]])
    url = feats.files[0]
    table = pq.read_table(url)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    uris = []
    for i, key in enumerate(feats.keys[:4]):
        w, h = SIZES[i]
        path = imgs / f"{key}.jpg"
        if i == 0:
            path.write_bytes(image_bytes(w, h, seed=i))  # good
        elif i == 1:
            path.write_bytes(image_bytes(w + 10, h, seed=i))  # changed since it was encoded
        elif i == 2:
            path.write_bytes(b"not an image")  # corrupt
        uris.append(str(path))  # i == 3: missing
    table = table.set_column(table.schema.get_field_index("image_uri"), "image_uri", pa.array(uris))
    S.write_feature_table(url, table)
    dest = tmp_path / "InternData"
    summary = export_pixart(feats.url, str(dest), images=True, resolutions=[256])
    assert summary.rows == 1
    reasons = dict(summary.skipped)
    assert set(reasons) == set(feats.keys[1:4])
    assert "310x400 now, 300x400 when it was encoded" in reasons[feats.keys[1]]
    assert reasons[feats.keys[2]].startswith("image: ")
    assert "no longer exists" in reasons[feats.keys[3]]
    assert [it["key"] for it in P.load_json(dest / "data_info.json")] == feats.keys[:1]
    assert sorted(os.listdir(dest / "caption_feature_wmask")) == [f"{feats.keys[0]}.npz"]
    assert summary.images == {"linked": 1}


# -- found in review (issue 11) -------------------------------------------------------------------
def get_data_path(data_root: str, data_dir: str) -> str:
    """PixArt's ``diffusion/data/builder.py``: ``set_data_root(config.data_root)``, then a relative
    ``root`` is joined onto it and an absolute one used as it is."""
    if os.path.isabs(data_dir):
        return data_dir
    return os.path.join(data_root, data_dir)


def test_a_relative_dest_gives_a_root_pixart_finds_and_images_where_it_looks(
    alpha_features, tmp_path, monkeypatch
) -> None:
    # Exported from a folder whose own path holds "InternData": PixArt replaces it in the whole
    # (absolute) root, so the images must go where that replacement points, not beside DEST.
    cwd = tmp_path / "InternData_runs"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    summary = export_pixart(alpha_features, "InternData", images=True)
    hint = _hints(summary, "InternalDataMS", 512, False)
    # the shipped α configs set data_root = 'data'; training runs from PixArt's checkout
    root = get_data_path("data", hint["data"]["root"])
    assert root == str(cwd / "InternData")
    ds = P.InternalDataMS(
        root,
        hint["data"]["image_list_json"],
        resolution=512,
        load_vae_feat=False,
        max_length=hint["model_max_length"],
        aspect_ratio_type=hint["aspect_ratio_type"],
    )
    assert len(ds.meta_data_clean) == 6
    for i in range(len(ds.meta_data_clean)):
        img, _, _, info = ds.getdata(i)
        assert list(img.shape[1:]) == info["closest_size"]


def _empty_alt(sigma_features: str, tmp_path: Path, empty: set[str]) -> str:
    """The features with the raw caption of ``empty`` keys made empty (a folder source has none)."""
    out = tmp_path / "features"
    shutil.copytree(sigma_features, out)
    for f in out.glob("part-*.parquet"):
        t = pq.read_table(f)
        texts = [
            ("" if k in empty else s)
            for k, s in zip(t["key"].to_pylist(), t["t5_raw_text"].to_pylist(), strict=True)
        ]
        i = t.schema.get_field_index("t5_raw_text")
        pq.write_table(t.set_column(i, t.schema.field(i), pa.array(texts, pa.string())), f)
    return str(out)


def test_an_alternate_caption_empty_everywhere_is_no_alternate_caption(sigma_features, tmp_path) -> None:
    # e.g. --alt-caption raw on a folder of images without .txt: every 'sharegpt4v' is ""
    keys = set(stored(sigma_features)[1])
    features = _empty_alt(sigma_features, tmp_path, keys)
    summary = export_pixart(
        features, str(tmp_path / "InternData"), layouts=("sigma",), alt_caption_field="raw"
    )
    hint = _hints(summary, "InternalDataMSSigma", 512, True)
    assert hint["real_prompt_ratio"] == 1.0
    (warning,) = summary.warnings
    assert "empty" in warning and "real_prompt_ratio=1.0" in warning and "\n" not in warning
    _sigma_ms(hint, 512)  # builds (Σ asserts a non-empty first 'sharegpt4v' below 1.0)


def test_an_alternate_caption_empty_for_some_samples(sigma_features, tmp_path) -> None:
    plain = export_pixart(
        sigma_features, str(tmp_path / "a" / "InternData"), layouts=("sigma",), alt_caption_field="raw"
    )
    with open(plain.data_info[0]) as f:
        meta = json.load(f)
    first = meta[0]["key"]
    features = _empty_alt(sigma_features, tmp_path, {first})
    summary = export_pixart(
        features, str(tmp_path / "InternData"), layouts=("sigma",), alt_caption_field="raw"
    )
    hint = _hints(summary, "InternalDataMSSigma", 512, True)
    assert hint["real_prompt_ratio"] == 0.5
    (warning,) = summary.warnings
    assert "1 of 6" in warning and "\n" not in warning
    ds = _sigma_ms(hint, 512)  # the first entry must have one: Σ's assertion looks at it
    assert len(ds.meta_data_clean) == 6 and ds.meta_data_clean[0]["sharegpt4v"]
