"""export_pixart writes what PixArt's own loaders find and read.

``PixArtLoaders`` below reproduces the lookup of PixArt's datasets, line for line where it matters
(PixArt-alpha/PixArt-alpha @57b1f3c and PixArt-alpha/PixArt-sigma @2eb28c4/2b08ce5):

- α ``diffusion/data/datasets/InternalData.py``, ``InternalData.__init__``: JSON from
  ``os.path.join(self.root, 'partition', json_file)``; keeps ``item['ratio'] <= 4``; T5 file
  ``os.path.join(self.root, 'caption_feature_wmask',
  '_'.join(item['path'].rsplit('/', 1)).replace('.png', '.npz'))``;
  VAE file ``os.path.join(self.root, f'img_vae_features_{resolution}resolution/noflip', ...'.npy')``;
- α ``InternalData_ms.py``, ``InternalDataMS.__init__``: JSON from ``partition_filter/`` (older
  commits: ``partition/``); VAE file under ``f'img_vae_fatures_{resolution}_multiscale/ms'``;
- Σ ``InternalData_ms.py``: ``replace_img_ext(item, dst_ext)`` = ``'_'.join(item['path'].rsplit('/', 1))``
  then ``.png``/``.jpg``/``.webp`` → ``dst_ext``; ``InternalDataMSSigma`` reads the JSON from
  ``root/json_file``, features from ``caption_features_new``/``sharegpt4v_caption_features_new`` and
  ``f'img_sdxl_vae_features_{resolution}resolution_ms_new'``;
- Σ ``InternalData.py``, ``InternalDataSigma``: ``item['path'].rsplit('/', 1)[-1].replace('.png', '.npz')``;
- reading: ``txt_info = np.load(npz_path); txt_fea = torch.from_numpy(txt_info['caption_feature'])``,
  ``attention_mask = torch.from_numpy(txt_info['attention_mask'])[None]``, and
  ``vae_feat_loader``: ``mean, std = torch.from_numpy(np.load(path)).chunk(2)``; ``mean + std * randn``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from recaption import io
from recaption.encoder import buckets as B
from recaption.encoder import schema as S
from recaption.errors import ConfigError
from recaption.pixart.export import export_pixart, image_path, loader_name

from .conftest import HIDDEN, MAX_LENGTH, SIZES, make_metadata, write_features


def alpha_name(item: dict, ext: str) -> str:
    return "_".join(item["path"].rsplit("/", 1)).replace(".png", ext)


def sigma_ms_name(item: dict, ext: str) -> str:
    return (
        "_".join(item["path"].rsplit("/", 1)).replace(".png", ext).replace(".jpg", ext).replace(".webp", ext)
    )


def sigma_internal_name(item: dict, ext: str) -> str:
    return item["path"].rsplit("/", 1)[-1].replace(".png", ext)


class PixArtLoaders:
    """The file lookups and array reads of PixArt's datasets (see the module docstring)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def items(self, json_dir: str) -> list[dict]:
        path = (
            os.path.join(self.root, json_dir, "data_info.json")
            if json_dir
            else os.path.join(self.root, "data_info.json")
        )
        with open(path) as f:
            meta_data = json.load(f)
        return [item for item in meta_data if item["ratio"] <= 4]

    def alpha_ms(self, resolution: int) -> list[tuple[dict, str, str]]:
        return [
            (
                item,
                os.path.join(self.root, "caption_feature_wmask", alpha_name(item, ".npz")),
                os.path.join(
                    self.root, f"img_vae_fatures_{resolution}_multiscale/ms", alpha_name(item, ".npy")
                ),
            )
            for item in self.items("partition_filter")
        ]

    def alpha_single(self, resolution: int) -> list[tuple[dict, str, str]]:
        return [
            (
                item,
                os.path.join(self.root, "caption_feature_wmask", alpha_name(item, ".npz")),
                os.path.join(
                    self.root, f"img_vae_features_{resolution}resolution/noflip", alpha_name(item, ".npy")
                ),
            )
            for item in self.items("partition")
        ]

    def sigma_ms(self, resolution: int) -> list[tuple[dict, str, str, str]]:
        return [
            (
                item,
                os.path.join(self.root, "caption_features_new", sigma_ms_name(item, ".npz")),
                os.path.join(self.root, "sharegpt4v_caption_features_new", sigma_ms_name(item, ".npz")),
                os.path.join(
                    self.root,
                    f"img_sdxl_vae_features_{resolution}resolution_ms_new",
                    sigma_ms_name(item, ".npy"),
                ),
            )
            for item in self.items("")
        ]

    @staticmethod
    def read_text(npz_path: str) -> tuple[torch.Tensor, torch.Tensor]:
        txt_info = np.load(npz_path)
        txt_fea = torch.from_numpy(txt_info["caption_feature"])
        attention_mask = torch.ones(1, 1, txt_fea.shape[1])
        if "attention_mask" in txt_info:
            attention_mask = torch.from_numpy(txt_info["attention_mask"])[None]
        return txt_fea, attention_mask

    @staticmethod
    def read_vae(npy_path: str) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = torch.from_numpy(np.load(npy_path)).chunk(2)
        return mean, std


@pytest.fixture(scope="module")
def exported(tmp_path_factory, features):
    dest = str(tmp_path_factory.mktemp("pixart") / "InternData")
    summary = export_pixart(features.url, dest, alt_caption_field="raw", layouts=("internal", "sigma"))
    return dest, summary


def test_every_loader_finds_every_file(exported, features) -> None:
    dest, summary = exported
    assert summary.rows == len(features.keys)
    loaders = PixArtLoaders(dest)
    for res in (256, 512):
        found = loaders.alpha_ms(res)
        assert len(found) == len(features.keys)
        for _, npz, npy in found:
            assert os.path.isfile(npz), npz
            assert os.path.isfile(npy), npy
        for _, npz, alt_npz, npy in loaders.sigma_ms(res):
            assert os.path.isfile(npz)
            assert os.path.isfile(alt_npz)
            assert os.path.isfile(npy)
    # The other rules give the same names for our flat .png paths.
    for item in loaders.items("partition"):
        assert alpha_name(item, ".npz") == sigma_ms_name(item, ".npz") == sigma_internal_name(item, ".npz")
        assert loader_name(item["path"], ".npy") == alpha_name(item, ".npy")
    texts = [json.load(open(u)) for u in summary.data_info]  # noqa: SIM115
    assert texts[0] == texts[1] == texts[2]
    assert sorted(summary.data_info) == sorted(
        os.path.join(dest, *p)
        for p in (
            ("data_info.json",),
            ("partition", "data_info.json"),
            ("partition_filter", "data_info.json"),
        )
    )


def test_data_info_entries(exported, features) -> None:
    dest, _ = exported
    items = PixArtLoaders(dest).items("")
    assert [it["key"] for it in items] == features.keys
    for it in items:
        w, h = features.sizes[it["key"]]
        assert it["path"] == f"{it['key']}.png"
        assert (it["height"], it["width"]) == (h, w)
        assert it["ratio"] == h / w
        assert it["prompt"] == features.captions["dense"][it["key"]]
        assert it["sharegpt4v"] == features.captions["raw"][it["key"]]


def test_arrays_have_the_shapes_and_dtypes_pixart_reads(exported, features) -> None:
    dest, _ = exported
    loaders = PixArtLoaders(dest)
    for item, npz, npy in loaders.alpha_ms(512):
        key = item["key"]
        txt_fea, mask = loaders.read_text(npz)
        assert txt_fea.dtype == torch.float32
        assert tuple(txt_fea.shape) == (1, MAX_LENGTH, HIDDEN)
        assert mask.dtype == torch.int64
        assert tuple(mask.shape) == (1, 1, MAX_LENGTH)
        stored = features.texts["dense"][key]
        n = stored.shape[0]
        np.testing.assert_array_equal(txt_fea[0, :n].numpy(), stored)
        np.testing.assert_array_equal(txt_fea[0, n:].numpy(), np.repeat(stored[-1:], MAX_LENGTH - n, axis=0))
        assert mask[0, 0].tolist() == [1] * n + [0] * (MAX_LENGTH - n)
        mean, std = loaders.read_vae(npy)
        closest_size, _ = B.closest_bucket(item["height"], item["width"], 512), None
        assert mean.dtype == torch.float32
        assert tuple(mean.shape) == (4, closest_size.height // 8, closest_size.width // 8)
        np.testing.assert_array_equal(torch.cat([mean, std]).numpy(), features.latents[512][key])
        sigma_alt = os.path.join(dest, "sharegpt4v_caption_features_new", alpha_name(item, ".npz"))
        alt, _ = loaders.read_text(sigma_alt)
        np.testing.assert_array_equal(
            alt[0, : features.texts["raw"][key].shape[0]].numpy(), features.texts["raw"][key]
        )


def test_summary_suggests_a_pixart_config(exported) -> None:
    _, summary = exported
    hint = summary.config_hint
    assert hint["data"]["type"] == "InternalDataMS"
    assert hint["data"]["load_vae_feat"] is True
    assert hint["model_max_length"] == MAX_LENGTH
    assert hint["aspect_ratio_type"] == "ASPECT_RATIO_512"
    assert hint["scale_factor"] == 0.18215


def test_existing_destination_needs_overwrite(exported, features) -> None:
    dest, _ = exported
    with pytest.raises(ConfigError, match="overwrite=True"):
        export_pixart(features.url, dest)


def test_unpadded_export_and_single_scale_noflip(tmp_path, tiny_vae_dir) -> None:
    from recaption.encoder.vae import ImageEncoder, VaeConfig

    enc = ImageEncoder(
        VaeConfig(model=tiny_vae_dir, resolutions=(256,), multiscale=False, preprocess_threads=0)
    )
    feats = write_features(tmp_path / "square", enc, shards=[[0, 1, 2]])
    dest = str(tmp_path / "out")
    summary = export_pixart(feats.url, dest, pad_to_max_length=False, compress=True)
    assert summary.config_hint["data"]["type"] == "InternalData"
    loaders = PixArtLoaders(dest)
    for item, npz, npy in loaders.alpha_single(256):
        txt_fea, mask = loaders.read_text(npz)
        n = feats.texts["dense"][item["key"]].shape[0]
        assert tuple(txt_fea.shape) == (1, n, HIDDEN)
        assert mask.sum() == n
        mean, _ = loaders.read_vae(npy)
        assert tuple(mean.shape) == (4, 32, 32)


def test_keys_with_slashes_are_flattened_and_collisions_refused(tmp_path, encoder) -> None:
    keys = ["a/b/c", "d/e", "f", "photos/cat.jpg"]
    feats = write_features(tmp_path / "slash", encoder, shards=[[0, 1, 2, 3]], keys=keys, sizes=SIZES[:4])
    dest = str(tmp_path / "out")
    export_pixart(feats.url, dest, resolutions=[256], layouts=("internal", "sigma"))
    items = PixArtLoaders(dest).items("")
    # an extension inside a key would be replaced by Σ's rule as well: it is written _jpg
    assert [it["path"] for it in items] == ["a_b_c.png", "d_e.png", "f.png", "photos_cat_jpg.png"]
    assert image_path("a/b/c") == "a_b_c.png"
    for _, npz, npy in PixArtLoaders(dest).alpha_ms(256):
        assert os.path.isfile(npz)
        assert os.path.isfile(npy)
    for _, npz, _alt, npy in PixArtLoaders(dest).sigma_ms(256):
        assert os.path.isfile(npz), npz
        assert os.path.isfile(npy), npy
    for item in items:
        assert alpha_name(item, ".npz") == sigma_ms_name(item, ".npz") == sigma_internal_name(item, ".npz")
    clash = write_features(
        tmp_path / "clash", encoder, shards=[[0, 1]], keys=["x/y", "x_y"], sizes=[(300, 300)] * 2
    )
    with pytest.raises(ConfigError, match="keys"):
        export_pixart(clash.url, str(tmp_path / "out2"), resolutions=[256])


def sigma_repo_internal_name(item: dict, ext: str) -> str:
    """PixArt-Σ's own ``InternalData`` (the class its ``pixart_alpha_config`` configs train α with):
    ``replace_img_ext`` also replaces ``.jpeg``, ``.JPEG`` and ``.JPG``."""
    name = "_".join(item["path"].rsplit("/", 1))
    for e in (".png", ".jpg", ".webp", ".jpeg", ".JPEG", ".JPG"):
        name = name.replace(e, ext)
    return name


def test_keys_with_upper_case_extensions_keep_one_name_for_every_loader(tmp_path, encoder) -> None:
    keys = ["DCIM/IMG_0001.JPG", "scan.JPEG", "a.jpeg"]
    feats = write_features(tmp_path / "f", encoder, shards=[[0, 1, 2]], keys=keys, sizes=SIZES[:3])
    dest = str(tmp_path / "out")
    export_pixart(feats.url, dest, resolutions=[256], layouts=("internal", "sigma"))
    items = PixArtLoaders(dest).items("partition")
    assert len(items) == 3
    for item in items:
        name = sigma_repo_internal_name(item, ".npz")
        assert name == alpha_name(item, ".npz") == sigma_ms_name(item, ".npz")
        assert os.path.isfile(os.path.join(dest, "caption_feature_wmask", name)), name


def test_sigma_checkouts_alpha_multiscale_class_finds_the_t5_features(tmp_path, encoder) -> None:
    # PixArt-Σ's checkout ships the α configs too (configs/pixart_alpha_config/*_internalms.py); its
    # InternalDataMS (diffusion/data/datasets/InternalData_ms.py @6b48b3b) reads the JSON from root,
    # T5 from caption_features/ (unpadded: it does not pad) and the α multi-scale latents.
    feats = write_features(tmp_path / "f", encoder, shards=[[0, 1, 2]], sizes=SIZES[:3])
    dest = str(tmp_path / "InternData")
    export_pixart(feats.url, dest, resolutions=[256])
    with open(os.path.join(dest, "data_info.json")) as f:
        items = [i for i in json.load(f) if i["ratio"] <= 4]
    assert len(items) == 3
    for item in items:
        name = sigma_repo_internal_name(item, ".npz")
        with np.load(os.path.join(dest, "caption_features", name)) as z:
            assert z["caption_feature"].shape == (1, MAX_LENGTH, HIDDEN)
            assert z["attention_mask"].shape == (1, MAX_LENGTH)
        lat = np.load(
            os.path.join(dest, "img_vae_fatures_256_multiscale/ms", sigma_repo_internal_name(item, ".npy"))
        )
        assert lat.dtype == np.float32 and lat.ndim == 3


def test_keys_longer_than_a_file_name_are_exported_under_a_short_name(tmp_path, encoder) -> None:
    # a folder source's key is the relative path: flattened, a deep one exceeds the 255 bytes a file
    # name may have (and a UTF-8 name counts bytes)
    keys = ["/".join(["d" * 100, "e" * 100, "f" * 100]), "ü" * 140, "short"]
    feats = write_features(tmp_path / "f", encoder, shards=[[0, 1, 2]], keys=keys, sizes=SIZES[:3])
    dest = str(tmp_path / "InternData")
    summary = export_pixart(feats.url, dest, resolutions=[256], layouts=("internal", "sigma"))
    assert summary.rows == 3 and not summary.skipped
    loaders = PixArtLoaders(dest)
    items = loaders.items("")
    assert sorted(i["key"] for i in items) == sorted(keys)
    for item in items:
        assert len(item["path"].encode()) <= 255 - 4
        assert alpha_name(item, ".npz") == sigma_ms_name(item, ".npz") == sigma_internal_name(item, ".npz")
    assert image_path("short") == "short.png"
    for _, npz, npy in loaders.alpha_ms(256):
        assert os.path.isfile(npz) and os.path.isfile(npy)
    for _, npz, _alt, npy in loaders.sigma_ms(256):
        assert os.path.isfile(npz) and os.path.isfile(npy)


def test_rows_over_the_loaders_ratio_are_skipped(tmp_path, tiny_vae_dir) -> None:
    from recaption.encoder.vae import ImageEncoder, VaeConfig

    # A Σ-style encoder keeps ratios up to 4.5, as Σ's loader does: the exporter follows the rule
    # the features were made with, and PixArt-α's (drop > 4) when asked.
    enc = ImageEncoder(VaeConfig(model=tiny_vae_dir, resolutions=(256,), max_ratio=4.5, preprocess_threads=0))
    feats = write_features(tmp_path / "tall", enc, shards=[[0, 1]], sizes=[(100, 440), (300, 300)])
    assert S.read_metadata(feats.files[0]).image.max_ratio == 4.5  # type: ignore[union-attr]
    assert export_pixart(feats.url, str(tmp_path / "sigma")).rows == 2
    summary = export_pixart(feats.url, str(tmp_path / "alpha"), max_ratio=4.0)
    assert summary.rows == 1
    assert summary.skipped[0][0] == "img000"
    assert "ratio 4.400 > 4" in summary.skipped[0][1]


def test_an_export_killed_mid_write_leaves_no_truncated_array(tmp_path, features, monkeypatch) -> None:
    """A write that dies halfway (the third array file) leaves every array under a final name
    whole: training never trips on a truncated .npz/.npy. Fails if files are written in place."""
    from fsspec.implementations.local import LocalFileOpener

    class Killed(BaseException):
        pass

    real_write = LocalFileOpener.write
    writes = {"n": 0}

    def dying_write(self, data):  # type: ignore[no-untyped-def]
        if len(data) > 64 and writes["n"] >= 0:
            writes["n"] += 1
            if writes["n"] == 3:
                real_write(self, bytes(data)[: len(data) // 2])
                raise Killed
        return real_write(self, data)

    monkeypatch.setattr(LocalFileOpener, "write", dying_write)
    monkeypatch.setattr(io, "abort_output", lambda *a: None)  # a killed process cleans nothing up
    dest = tmp_path / "killed"
    with pytest.raises(Killed):
        export_pixart(features.url, str(dest), alt_caption_field="raw")
    monkeypatch.setattr(LocalFileOpener, "write", real_write)
    arrays = [p for p in dest.rglob("*") if p.suffix in (".npz", ".npy")]
    assert arrays  # those finished before the kill
    for p in arrays:
        loaded = np.load(p)
        if p.suffix == ".npz":
            assert all(loaded[k].size for k in loaded.files)


def test_mixed_store_dtypes_are_refused(tmp_path, encoder, features) -> None:
    """float16 and bfloat16 are both two bytes: decoded with the other's dtype they give wrong
    numbers and no error, so files stored in different dtypes are never read together."""
    import dataclasses
    import shutil

    from recaption.pixart.dataset import FeatureDataset

    meta = make_metadata(encoder)
    meta = dataclasses.replace(meta, text=dataclasses.replace(meta.text, dtype="bfloat16"))
    other = tmp_path / "mixed"
    write_features(other, encoder, shards=[[0]], metadata=meta)
    shutil.copy(features.files[1], other / "part-00001.parquet")
    with pytest.raises(S.MixedFeaturesError, match=r"text.dtype: 'bfloat16' vs 'float16'"):
        export_pixart(str(other), str(tmp_path / "out"))
    with pytest.raises(S.MixedFeaturesError, match=r"text.dtype"):
        FeatureDataset(str(other), resolution=256)


def test_mixed_presets_are_refused(tmp_path, encoder, features) -> None:
    other = tmp_path / "mixed"
    write_features(other, encoder, shards=[[0]], metadata=make_metadata(encoder, max_length=MAX_LENGTH + 1))
    import shutil

    shutil.copy(features.files[1], other / "part-00001.parquet")
    with pytest.raises(S.MixedFeaturesError, match=r"text.max_length: 13 vs 12"):
        export_pixart(str(other), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "data_info.json")


def test_unknown_layout_is_a_config_error(features, tmp_path) -> None:
    with pytest.raises(ConfigError, match="layout"):
        export_pixart(features.url, str(tmp_path / "o"), layouts=("kohya",))
