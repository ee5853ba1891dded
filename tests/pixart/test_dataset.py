"""FeatureDataset yields what PixArt's InternalDataMS yields; the sampler draws one bucket per batch.

The contract (PixArt-alpha/PixArt-alpha ``diffusion/data/datasets/InternalData_ms.py``,
``InternalDataMS.getdata`` with ``load_vae_feat=True``): ``(img, txt_fea, attention_mask, data_info)``
with ``img`` = ``mean + std * randn`` of the stored (2C, h, w) array (``InternalData.vae_feat_loader``),
``data_info = {'img_hw': tensor([ori_h, ori_w], float32), 'aspect_ratio': closest_ratio,
'mask_type': ...}``; the text padded as ``InternalData.getdata`` pads it (last token repeated, mask 0).
"""

from __future__ import annotations

import pickle
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from recaption.encoder import buckets as B
from recaption.encoder import schema as S
from recaption.errors import ConfigError
from recaption.pixart.dataset import AspectRatioBatchSampler, FeatureDataset

from .conftest import HIDDEN, MAX_LENGTH, make_metadata, write_features


def pixart_get_closest_ratio(height: float, width: float, ratios: dict) -> tuple[list, float]:
    aspect_ratio = height / width
    closest_ratio = min(ratios.keys(), key=lambda ratio: abs(float(ratio) - aspect_ratio))
    return ratios[closest_ratio], float(closest_ratio)


def test_items_follow_internaldatams_contract(features) -> None:
    ds = FeatureDataset(features.url, resolution=512, caption_field="dense", seed=0)
    assert len(ds) == len(features.keys)
    assert ds.ori_imgs_nums == len(features.keys)
    assert ds.load_vae_feat is True
    assert ds.aspect_ratio is B.ASPECT_RATIO_512
    for i in range(len(ds)):
        key = ds.keys[i]
        w, h = features.sizes[key]
        latent, txt_fea, mask, info = ds[i]
        closest_size, closest_ratio = pixart_get_closest_ratio(h, w, B.ASPECT_RATIO_512)
        assert latent.dtype == torch.float32
        assert tuple(latent.shape) == (4, int(closest_size[0]) // 8, int(closest_size[1]) // 8)
        assert txt_fea.dtype == torch.float32
        assert tuple(txt_fea.shape) == (1, MAX_LENGTH, HIDDEN)
        assert mask.dtype == torch.int64
        assert tuple(mask.shape) == (1, 1, MAX_LENGTH)
        assert set(info) == {"img_hw", "aspect_ratio", "mask_type"}
        assert info["img_hw"].dtype == torch.float32
        assert info["img_hw"].tolist() == [h, w]  # the original size
        assert info["aspect_ratio"] == closest_ratio
        assert info["mask_type"] == "null"
        assert ds.get_data_info(i) == {"height": h, "width": w}


def test_text_is_padded_like_pixart_with_mask_zero(features) -> None:
    ds = FeatureDataset(features.url, resolution=256, caption_field="raw")
    for i in range(len(ds)):
        stored = features.texts["raw"][ds.keys[i]]
        n = stored.shape[0]
        _, txt_fea, mask, _ = ds[i]
        np.testing.assert_array_equal(txt_fea[0, :n].numpy(), stored)
        np.testing.assert_array_equal(txt_fea[0, n:].numpy(), np.repeat(stored[-1:], MAX_LENGTH - n, axis=0))
        assert mask[0, 0, :n].tolist() == [1] * n
        assert mask[0, 0, n:].tolist() == [0] * (MAX_LENGTH - n)


def test_a_shorter_training_length_truncates(features) -> None:
    ds = FeatureDataset(features.url, resolution=256, max_length=4)
    _, txt_fea, mask, _ = ds[0]
    assert tuple(txt_fea.shape) == (1, 4, HIDDEN)
    assert int(mask.sum()) == min(4, features.texts["dense"][ds.keys[0]].shape[0])


def test_latent_is_mean_plus_std_times_fresh_noise(features) -> None:
    ds = FeatureDataset(features.url, resolution=256, seed=7)
    i = 3
    stored = features.latents[256][ds.keys[i]]
    mean, std = ds.latent_parts(i)
    np.testing.assert_array_equal(np.concatenate([mean, std]), stored)
    a, b = ds[i][0], ds[i][0]
    torch.testing.assert_close(a, b)  # seeded: the same (epoch, index) gives the same draw
    noise = (a - torch.from_numpy(mean)) / torch.from_numpy(std)
    assert abs(float(noise.mean())) < 0.3
    assert 0.7 < float(noise.std()) < 1.3
    ds.set_epoch(1)
    assert not torch.equal(ds[i][0], a)
    unseeded = FeatureDataset(features.url, resolution=256)
    torch.manual_seed(0)
    x = unseeded[i][0]
    torch.manual_seed(0)
    assert torch.equal(unseeded[i][0], x)  # torch's global generator, as PixArt's randn_tensor


def test_ratio_nums_and_bucket_keys_match_pixarts_closest_ratio(features) -> None:
    ds = FeatureDataset(features.url, resolution=256)
    want = Counter(pixart_get_closest_ratio(h, w, B.ASPECT_RATIO_256)[1] for w, h in features.sizes.values())
    assert {k: v for k, v in ds.ratio_nums.items() if v} == dict(want)
    assert set(ds.ratio_nums) == {float(k) for k in B.ASPECT_RATIO_256}
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        # what PixArt's AspectRatioBatchSampler computes from get_data_info
        closest = min(ds.aspect_ratio.keys(), key=lambda r: abs(float(r) - info["height"] / info["width"]))
        assert closest == ds.bucket_keys[i]


def test_sampler_batches_hold_one_bucket_and_cover_everything(features) -> None:
    ds = FeatureDataset(features.url, resolution=256)
    sampler = AspectRatioBatchSampler(ds, batch_size=2, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(ds)))
    for b in batches:
        assert len({ds.bucket_keys[i] for i in b}) == 1
    assert list(AspectRatioBatchSampler(ds, batch_size=2, seed=3)) == batches  # deterministic
    sampler.set_epoch(1)
    orders = {tuple(map(tuple, AspectRatioBatchSampler(ds, batch_size=2, seed=s))) for s in range(6)}
    assert len(orders) > 1
    dropped = list(AspectRatioBatchSampler(ds, batch_size=2, seed=3, drop_last=True))
    assert all(len(b) == 2 for b in dropped)
    per_bucket = Counter(ds.bucket_keys)
    assert len(dropped) == sum(n // 2 for n in per_bucket.values())


def test_sampler_replicas_take_equal_steps_and_valid_num_filters(features) -> None:
    ds = FeatureDataset(features.url, resolution=256)
    whole = list(AspectRatioBatchSampler(ds, batch_size=2, seed=1))
    for n in (2, 3, 4):
        for drop_last in (False, True):
            samplers = [
                AspectRatioBatchSampler(ds, batch_size=2, seed=1, num_replicas=n, rank=r, drop_last=drop_last)
                for r in range(n)
            ]
            ranks = [list(s) for s in samplers]
            # every rank the same number of steps, or multi-GPU training hangs on the longest
            assert len({len(b) for b in ranks}) == 1, (n, drop_last, [len(b) for b in ranks])
            assert [len(s) for s in samplers] == [len(b) for b in ranks]
            dealt = [b for step in zip(*ranks, strict=True) for b in step]
            if drop_last:  # whole batches, none twice, at most n - 1 of the full batches left out
                full = [b for b in whole if len(b) == 2]
                assert all(b in full for b in dealt) and len(full) - len(dealt) < n
                assert len({tuple(b) for b in dealt}) == len(dealt)
            else:  # everything, the first few batches again to even the count
                assert dealt[: len(whole)] == whole
                assert dealt[len(whole) :] == whole[: len(dealt) - len(whole)]
                assert len(dealt) - len(whole) < n
    big = {k for k, n in Counter(ds.bucket_keys).items() if n >= 2}
    kept = [i for b in AspectRatioBatchSampler(ds, batch_size=2, valid_num=2) for i in b]
    assert {ds.bucket_keys[i] for i in kept} == big
    local = [i for b in AspectRatioBatchSampler(ds, batch_size=2, seed=2, locality=1) for i in b]
    assert sorted(local) == list(range(len(ds)))
    with pytest.raises(ConfigError, match="rank"):
        AspectRatioBatchSampler(ds, batch_size=2, num_replicas=2, rank=2)


def test_dataloader_with_the_sampler_collates_batches(features) -> None:
    ds = FeatureDataset(features.url, resolution=256, seed=0)
    loader = DataLoader(ds, batch_sampler=AspectRatioBatchSampler(ds, batch_size=2, seed=0), num_workers=0)
    seen = 0
    for latent, txt_fea, mask, info in loader:
        b = latent.shape[0]
        seen += b
        assert latent.shape[1] == 4
        assert tuple(txt_fea.shape) == (b, 1, MAX_LENGTH, HIDDEN)
        assert tuple(mask.shape) == (b, 1, 1, MAX_LENGTH)
        assert tuple(info["img_hw"].shape) == (b, 2)
        assert len(set(info["aspect_ratio"].tolist())) == 1
    assert seen == len(ds)


def test_dataset_pickles_for_dataloader_workers(features) -> None:
    ds = FeatureDataset(features.url, resolution=256, seed=0)
    ds[0]  # opens a file and fills the cache
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[0][0], ds[0][0])


def test_mixed_presets_are_refused_with_the_files_and_fields(tmp_path, encoder, features) -> None:
    other = tmp_path / "mixed"
    write_features(other, encoder, shards=[[0, 1]], metadata=make_metadata(encoder, t5_model="other-t5"))
    shutil.copy(features.files[0], tmp_path / "mixed" / "part-00001.parquet")
    with pytest.raises(S.MixedFeaturesError) as err:
        FeatureDataset(str(other), resolution=256)
    text = str(err.value)
    assert "part-00001.parquet differs from" in text
    assert "part-00000.parquet" in text
    assert "text.model_id: 'other-t5' vs 'tiny-t5'" in text


def test_missing_resolution_or_field_is_a_config_error(features) -> None:
    with pytest.raises(ConfigError, match="invalid value for resolution: 1024; accepted: 256, 512"):
        FeatureDataset(features.url, resolution=1024)
    with pytest.raises(ConfigError, match="invalid value for caption field: 'long'"):
        FeatureDataset(features.url, caption_field="long")


def test_single_scale_features_follow_internaldata(tmp_path, tiny_vae_dir) -> None:
    from recaption.encoder.vae import ImageEncoder, VaeConfig

    enc = ImageEncoder(
        VaeConfig(model=tiny_vae_dir, resolutions=(256,), multiscale=False, preprocess_threads=0)
    )
    folder = write_features(tmp_path / "square", enc, shards=[[0, 1, 2]])
    ds = FeatureDataset(folder.url)
    latent, _, _, info = ds[1]
    assert tuple(latent.shape) == (4, 32, 32)
    assert info["img_hw"].tolist() == [256.0, 256.0]
    assert float(info["aspect_ratio"]) == 1.0
    assert info["prompt"] == folder.captions["dense"][ds.keys[1]]


def test_feature_files_are_found_in_folders_files_globs_and_lists(features, tmp_path) -> None:
    from recaption.errors import SourceError
    from recaption.pixart.features import list_feature_files

    assert list_feature_files(features.url) == features.files
    assert list_feature_files(features.files[1]) == [features.files[1]]
    assert list_feature_files(features.url + "/part-*.parquet") == features.files
    assert list_feature_files([features.files[1], features.url]) == features.files
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_stats").mkdir()
    with pytest.raises(SourceError, match="holds no feature shards"):
        list_feature_files(str(tmp_path / "empty"))
    with pytest.raises(SourceError, match="no such file or folder"):
        list_feature_files(str(tmp_path / "missing"))
