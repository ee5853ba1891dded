"""ImageEncoder on a tiny random AutoencoderKL loaded through from_pretrained (CPU, offline)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from recaption.encoder import buckets as B
from recaption.encoder import schema as S
from recaption.encoder.tiny_vae import TINY_VAE_CONFIG, build_tiny_vae
from recaption.encoder.vae import (
    ImageEncoder,
    VaeConfig,
    fuse_norms,
    group_norm_act,
    resolve_preset,
)
from recaption.errors import ConfigError


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_vae(str(tmp_path_factory.mktemp("tiny_vae")))


@pytest.fixture(scope="module")
def encoder(vae_dir: str) -> ImageEncoder:
    return ImageEncoder(VaeConfig(model=vae_dir, resolutions=(256, 512), preprocess_threads=2)).load()


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def plain_encode(vae_dir: str, crop: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' own encode on torchvision's ToTensor + Normalize([.5], [.5]) of the crop."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    x = torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float().div(255)
    x = (x - 0.5) / 0.5
    with torch.no_grad():
        d = vae.encode(x).latent_dist
    return d.mean[0], d.std[0]


def test_tiny_vae_is_deterministic_and_loads_with_from_pretrained(tmp_path, vae_dir: str) -> None:
    from diffusers import AutoencoderKL

    other = build_tiny_vae(str(tmp_path / "again"))
    a = AutoencoderKL.from_pretrained(vae_dir)
    b = AutoencoderKL.from_pretrained(other)
    assert a.config.latent_channels == TINY_VAE_CONFIG["latent_channels"]
    assert len(a.config.block_out_channels) == 4  # 3 downsamplings: latents are 1/8 of the image
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb
        assert torch.equal(pa, pb), na


def test_encode_returns_mean_and_std_of_the_bucket_crop(encoder: ImageEncoder, vae_dir: str) -> None:
    images = [
        noise_image(400, 300, 1),
        noise_image(300, 400, 2),
        noise_image(500, 500, 3),
        noise_image(402, 301, 4),
    ]
    results = encoder.encode(images, 256)
    assert len(results) == 4
    for img, r in zip(images, results, strict=True):
        w, h = img.size
        bucket = B.closest_bucket(h, w, B.ASPECT_RATIO_256)
        assert r.bucket == bucket
        assert r.crop == B.crop_for_bucket(h, w, bucket)
        assert r.latent.shape == (8, bucket.height // 8, bucket.width // 8)
        assert r.latent.dtype == np.float16
        assert r.orig_size == (w, h)
        assert (r.std > 0).all()
    # Against diffusers' own encode of the same crop, float32 on the CPU: equal up to float16 storage.
    crop = encoder.preprocess(images[0], 256)
    assert crop.shape == (results[0].bucket.height, results[0].bucket.width, 3)
    mean, std = plain_encode(vae_dir, crop)
    np.testing.assert_allclose(results[0].mean, mean.numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(results[0].std, std.numpy(), rtol=2e-3, atol=2e-3)


def test_preprocess_at_2048_uses_lanczos_as_pixart_sigma(vae_dir: str) -> None:
    enc = ImageEncoder(VaeConfig(model=vae_dir, resolutions=(2048,), preprocess_threads=0))
    img = noise_image(900, 600, 6)
    _, box = enc.plan(900, 600, 2048)
    full = img.resize((box.resized_w, box.resized_h), Image.Resampling.LANCZOS)
    expected = full.crop((box.left, box.top, box.left + box.width, box.top + box.height))
    np.testing.assert_array_equal(enc.preprocess(img, 2048), np.asarray(expected))


def test_preprocess_is_pixarts_bicubic_resize_then_centre_crop(encoder: ImageEncoder) -> None:
    img = noise_image(640, 480, 5)
    bucket, box = encoder.plan(640, 480, 512)
    # 480/640 = 0.75 is as far from 0.72 as from 0.78 (in floats too): PixArt's min() keeps 0.72.
    assert (bucket.key, bucket.height, bucket.width) == ("0.72", 416, 576)
    # 416/480 > 576/640? No -> resize to (int(480 * 576 / 640), 576) = (432, 576), crop top 8.
    assert (box.resized_h, box.resized_w, box.top, box.left) == (432, 576, 8, 0)
    expected = img.resize((576, 432), Image.Resampling.BICUBIC).crop((0, 8, 576, 424))
    np.testing.assert_array_equal(encoder.preprocess(img, 512), np.asarray(expected))


def test_bfloat16_storage_round_trips_through_the_schema(vae_dir: str) -> None:
    enc = ImageEncoder(
        VaeConfig(model=vae_dir, resolutions=(256,), store_dtype="bfloat16", preprocess_threads=0)
    )
    (r,) = enc.encode([noise_image(256, 256)], 256)
    assert r.latent.dtype == np.uint16  # raw bfloat16 bit patterns
    row = r.row()
    back = S.unpack_tensor(row["vae_256"], (8, 32, 32), "bfloat16")
    np.testing.assert_array_equal(back, r.as_float32())
    t = S.unpack_tensor(row["vae_256"], (8, 32, 32), "bfloat16", to="torch")
    assert t.dtype == torch.bfloat16
    assert row["vae_256_crop"] == [0, 0, 256, 256]
    assert row["vae_256_ratio"] == 1.0


def test_encode_all_and_draft_decoded_images_use_the_original_size(encoder: ImageEncoder) -> None:
    full = noise_image(800, 600, 7)
    half = full.resize((400, 300), Image.Resampling.BICUBIC)  # as JPEG draft mode would give
    (a,) = encoder.encode_all([full])
    (b,) = encoder.encode_all([half], orig_sizes=[(800, 600)])
    for r in (256, 512):
        assert a[r].bucket == b[r].bucket
        assert a[r].crop == b[r].crop
        assert a[r].latent.shape == b[r].latent.shape
    assert encoder.decode_size(800, 600) == (a[512].crop.resized_w, a[512].crop.resized_h)


def test_ratio_over_four_is_refused_and_very_wide_is_kept_as_pixart_does(encoder: ImageEncoder) -> None:
    assert "over 4" in (encoder.check(100, 401) or "")
    assert encoder.check(100, 400) is None  # ratio exactly 4 is kept (PixArt: ratio <= 4)
    assert encoder.check(500, 100) is None  # ratio 0.2: PixArt keeps it, in its 0.25 bucket
    with pytest.raises(ValueError, match="cannot be encoded"):
        encoder.encode([noise_image(64, 300)], 256)
    wide = encoder.encode([noise_image(1000, 200)], 256)[0]
    assert wide.bucket.key == "0.25"
    strict = ImageEncoder(VaeConfig(model=encoder.config.model, resolutions=(256,), min_ratio=0.25))
    assert "under 0.25" in (strict.check(1000, 200) or "")


def test_sigma_preset_keeps_up_to_four_and_a_half() -> None:
    enc = ImageEncoder(VaeConfig(preset="sigma"))
    assert enc.config.model_id == "stabilityai/sdxl-vae"
    assert enc.check(100, 440) is None
    assert enc.check(100, 460) is not None
    assert resolve_preset("alpha").scale_factor == 0.18215
    assert resolve_preset("sdxl").scale_factor == 0.13025


def test_single_scale_gives_square_bilinear_crops(vae_dir: str) -> None:
    enc = ImageEncoder(VaeConfig(model=vae_dir, resolutions=(256,), multiscale=False, preprocess_threads=0))
    img = noise_image(500, 300, 9)
    (r,) = enc.encode([img], 256)
    assert (r.bucket.height, r.bucket.width) == (256, 256)
    # torchvision Resize(256): shorter side 256, longer int(256 * 500 / 300) = 426; CenterCrop(256)
    assert (r.crop.resized_h, r.crop.resized_w) == (256, 426)
    assert (r.crop.top, r.crop.left) == (0, 85)
    expected = img.resize((426, 256), Image.Resampling.BILINEAR).crop((85, 0, 341, 256))
    np.testing.assert_array_equal(enc.preprocess(img, 256), np.asarray(expected))
    assert r.latent.shape == (8, 32, 32)
    assert enc.metadata().multiscale is False


def test_fused_group_norm_silu_matches_torch_and_keeps_channels_last() -> None:
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 16, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = (torch.randn(2, 16, 9, 7) * 3 + 5).contiguous(memory_format=torch.channels_last)
    want = torch.nn.functional.silu(norm(x))
    got = group_norm_act(x, norm.weight, norm.bias, 4, 1e-6, True)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        group_norm_act(x, norm.weight, norm.bias, 4, 1e-6, False), norm(x), rtol=1e-5, atol=1e-5
    )


def test_fusing_the_encoder_norms_leaves_its_output_unchanged(vae_dir: str) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        want = vae.encode(x).latent_dist.parameters
        n = fuse_norms(vae.encoder)
        vae.to(memory_format=torch.channels_last)
        got = vae.encode(x.contiguous(memory_format=torch.channels_last)).latent_dist.parameters
    # 4 down blocks + mid block: 4*1 + 2 resnets, 2 norms each, plus conv_norm_out
    assert n == 2 * (4 * TINY_VAE_CONFIG["layers_per_block"] + 2) + 1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_gemm_attention_and_padded_input_give_the_same_latents(vae_dir: str) -> None:
    images = [noise_image(320, 240, 11), noise_image(256, 256, 12)]
    plain = ImageEncoder(
        VaeConfig(model=vae_dir, resolutions=(256,), store_dtype="float32", preprocess_threads=0)
    )
    fast = ImageEncoder(
        VaeConfig(
            model=vae_dir,
            resolutions=(256,),
            store_dtype="float32",
            attention="gemm",
            pad_input=True,
            compile="norms",  # eager on the CPU: the fused function itself
            preprocess_threads=0,
        )
    ).load()
    assert fast.vae.encoder.conv_in.in_channels == 8
    for a, b in zip(plain.encode(images, 256), fast.encode(images, 256), strict=True):
        np.testing.assert_allclose(b.latent, a.latent, rtol=1e-4, atol=1e-5)


def test_a_model_that_does_not_match_the_preset_fails_at_load(tmp_path) -> None:
    folder = build_tiny_vae(str(tmp_path / "eight"), latent_channels=8)
    with pytest.raises(ConfigError, match="8 latent channels"):
        ImageEncoder(VaeConfig(model=folder)).load()


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"preset": "sd15"}, "vae preset"),
        ({"resolutions": (300,)}, "resolution"),
        ({"compile": "yes"}, "vae compile"),
        ({"store_dtype": "int8"}, "vae store dtype"),
        ({"batch_size": 0}, "vae batch size"),
        ({"attention": "xformers"}, "vae attention"),
        ({"device": "tpu"}, "vae device"),
    ],
)
def test_wrong_options_fail_at_once_naming_the_option(kwargs: dict, option: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid value for {option}"):
        VaeConfig(**kwargs)


def test_config_is_picklable_and_metadata_describes_the_run(encoder: ImageEncoder) -> None:
    cfg = pickle.loads(pickle.dumps(encoder.config))
    assert cfg == encoder.config
    meta = encoder.metadata()
    assert meta.model_id == encoder.config.model
    assert meta.latent_channels == 4
    assert meta.scale_factor == 0.18215
    assert meta.resolutions == [256, 512]
    assert meta.dtype == "float16"
    assert meta.compute_dtype == "float32"  # CPU
    # "auto" on the CPU: nothing compiled, and then NCHW (channels-last only pays with fused norms)
    assert encoder.compile_mode == "none"
    assert encoder.channels_last is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    ("compile_mode", "attention", "pad"),
    [("none", "auto", False), ("norms", "auto", False), ("full", "auto", False), ("full", "gemm", True)],
)
def test_gpu_bfloat16_fast_path_matches_cpu_float32(
    vae_dir: str, compile_mode: str, attention: str, pad: bool
) -> None:
    images = [noise_image(400, 300, 1), noise_image(300, 400, 2), noise_image(333, 333, 3)]
    cpu = ImageEncoder(VaeConfig(model=vae_dir, resolutions=(256,), device="cpu")).encode(images, 256)
    gpu_enc = ImageEncoder(
        VaeConfig(
            model=vae_dir,
            resolutions=(256,),
            device="cuda",
            compile=compile_mode,
            channels_last=True,
            attention=attention,
            pad_input=pad,
        )
    )
    gpu = gpu_enc.encode(images, 256)
    assert str(gpu_enc.compute_dtype) == "torch.bfloat16"
    for a, b in zip(cpu, gpu, strict=True):
        assert a.bucket == b.bucket
        assert a.latent.shape == b.latent.shape
        np.testing.assert_allclose(b.mean, a.mean, atol=0.05, rtol=0.05)
        np.testing.assert_allclose(b.std, a.std, atol=0.05, rtol=0.05)


def test_real_photos_decoded_by_the_foundation_encode_at_their_buckets(encoder: ImageEncoder) -> None:
    from pathlib import Path

    from recaption.images.decode import decode_image

    sam = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sam"
    files = sorted(sam.glob("*.jpg")) if sam.is_dir() else []
    if not files:
        pytest.skip(f"real photos not found in {sam} (../shared/data is absent on this machine)")
    decoded = [decode_image(p.read_bytes()) for p in files[:3]]
    results = encoder.encode(
        [d.image for d in decoded], 256, orig_sizes=[(d.width, d.height) for d in decoded]
    )
    for d, r in zip(decoded, results, strict=True):
        bucket = B.closest_bucket(d.height, d.width, 256)
        assert r.bucket == bucket
        assert r.latent.shape == (8, bucket.height // 8, bucket.width // 8)
        assert np.isfinite(r.as_float32()).all()


def test_pickled_vae_weights_are_refused_naming_the_folder_and_the_rule(tmp_path, vae_dir: str) -> None:
    from diffusers import AutoencoderKL

    folder = tmp_path / "pickled"
    AutoencoderKL.from_pretrained(vae_dir).save_pretrained(folder, safe_serialization=False)
    assert (folder / "diffusion_pytorch_model.bin").exists()
    assert not (folder / "diffusion_pytorch_model.safetensors").exists()
    with pytest.raises(ConfigError) as info:
        ImageEncoder(VaeConfig(model=str(folder))).load()
    msg = str(info.value)
    assert str(folder) in msg
    assert "only safetensors weights are loaded" in msg


def test_offline_unknown_vae_fails_fast_with_one_clear_message(monkeypatch) -> None:
    import time

    from recaption.errors import ModelUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as info:
        ImageEncoder(VaeConfig(model="no-such-org/no-such-vae")).load()
    assert time.perf_counter() - t0 < 3
    msg = str(info.value)
    assert msg.startswith("--vae-model 'no-such-org/no-such-vae': the model could not be fetched")
    assert "HF_HUB_OFFLINE=1" in msg


# ---------------------------------------------------------------- numerics and batching
def test_float16_is_refused_for_a_vae_that_needs_upcasting(tmp_path) -> None:
    folder = build_tiny_vae(str(tmp_path / "upcast"), force_upcast=True)
    with pytest.raises(ConfigError) as info:
        ImageEncoder(VaeConfig(model=folder, dtype="float16", device="cpu")).load()
    assert "force_upcast" in str(info.value)
    assert "float16" in str(info.value)
    plain = build_tiny_vae(str(tmp_path / "plain"), force_upcast=False)
    assert ImageEncoder(VaeConfig(model=plain, dtype="float16", device="cpu")).load().vae is not None


def test_scale_factor_is_the_loaded_vaes_and_a_mismatch_warns(tmp_path, caplog) -> None:
    folder = build_tiny_vae(str(tmp_path / "scaled"), scaling_factor=0.5)
    with caplog.at_level("WARNING", logger="recaption.encoder.vae"):
        enc = ImageEncoder(VaeConfig(model=folder, resolutions=(256,))).load()
    assert enc.metadata().scale_factor == 0.5
    assert any("scaling_factor 0.5" in r.getMessage() for r in caplog.records)


def test_a_non_finite_latent_fails_that_sample_only(vae_dir: str) -> None:
    enc = ImageEncoder(VaeConfig(model=vae_dir, resolutions=(256,), preprocess_threads=0)).load()
    real = enc._moments_fn

    def poisoned(x):
        out = real(x).clone()
        out[1, 0, 0, 0] = float("nan")  # the second image of the batch
        return out

    enc._moments_fn = poisoned
    images = [noise_image(256, 256, seed=i) for i in range(3)]
    results = enc.encode(images, 256)
    assert [r.ok for r in results] == [True, False, True]
    assert "non-finite" in results[1].error
    assert np.isfinite(results[0].as_float32()).all()


def test_vae_out_of_memory_splits_the_batch_and_loses_nothing(vae_dir: str) -> None:
    enc = ImageEncoder(
        VaeConfig(model=vae_dir, resolutions=(256,), batch_size=4, preprocess_threads=0)
    ).load()
    images = [noise_image(256, 256, seed=i) for i in range(5)]
    expected = [r.as_float32() for r in enc.encode(images, 256)]
    real, calls = enc.encode_arrays, []

    def limited(pixels, to_cpu=True):
        calls.append(len(pixels))
        if len(pixels) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real(pixels, to_cpu=to_cpu)

    enc.encode_arrays = limited
    enc.config.batch_pixels = 8 * 256 * 256  # 8 per batch at 256
    results = enc.encode(images, 256)
    assert calls == [5, 2, 3, 1, 2]
    assert all(r.ok for r in results)
    for r, e in zip(results, expected, strict=True):
        np.testing.assert_allclose(r.as_float32(), e, rtol=1e-2, atol=1e-3)
    assert enc.oom_splits == 2

    def always(pixels, to_cpu=True):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    enc.encode_arrays = always
    results = enc.encode(images[:2], 256)
    assert [r.ok for r in results] == [False, False]
    assert all("out of memory on a single image" in r.error for r in results)


def test_batches_are_sized_by_pixels() -> None:
    cfg = VaeConfig(batch_size=8)
    assert cfg.images_per_batch(1024, 1024) == 8
    assert cfg.images_per_batch(512, 512) == 32
    assert cfg.images_per_batch(256, 256) == 128
    assert cfg.images_per_batch(2048, 2048) == 2
    with pytest.raises(ConfigError, match="batch pixels"):
        VaeConfig(batch_pixels=10)
