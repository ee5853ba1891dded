"""PixArt's bucket tables, bucket choice, and its training resize + centre crop.

The reference formulas below are PixArt's and torchvision's, written out as they appear in:
- ``get_closest_ratio`` and the resize in ``InternalDataMS.getdata``
  (PixArt-alpha/PixArt-alpha ``diffusion/data/datasets/InternalData_ms.py``);
- ``torchvision.transforms.functional.center_crop`` and ``_compute_resized_output_size``.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recaption.encoder import buckets as B
from recaption.encoder import schema as S
from recaption.errors import ConfigError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def pixart_get_closest_ratio(height: float, width: float, ratios: dict) -> tuple[list, float]:
    # InternalData_ms.py, verbatim logic
    aspect_ratio = height / width
    closest_ratio = min(ratios.keys(), key=lambda ratio: abs(float(ratio) - aspect_ratio))
    return ratios[closest_ratio], float(closest_ratio)


def pixart_resize_size(ori_h: int, ori_w: int, closest_size: list[int]) -> tuple[int, int]:
    # InternalDataMS.getdata, verbatim logic
    if closest_size[0] / ori_h > closest_size[1] / ori_w:
        return closest_size[0], int(ori_w * closest_size[0] / ori_h)
    return int(ori_h * closest_size[1] / ori_w), closest_size[1]


def torchvision_center_crop_offsets(image_h: int, image_w: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    # torchvision.transforms.functional.center_crop, for a crop no larger than the image
    return int(round((image_h - crop_h) / 2.0)), int(round((image_w - crop_w) / 2.0))  # noqa: RUF046


@pytest.mark.parametrize("resolution", [256, 512, 1024, 2048])
def test_every_table_has_40_buckets_from_a_quarter_to_four(resolution: int) -> None:
    table = B.table_for(resolution)
    keys = list(table)
    assert len(keys) == 40
    assert keys[0] == "0.25"
    assert keys[-1] == "4.0"
    assert [float(k) for k in keys] == sorted(float(k) for k in keys)
    assert keys == list(B.ASPECT_RATIO_1024)  # the same 40 keys at every resolution
    for k, (h, w) in table.items():
        assert h % (resolution // 16) == 0
        assert w % (resolution // 16) == 0
        assert abs(h / w - float(k)) <= 0.005 + 1e-9  # keys are h/w rounded to 2 places
        assert 0.9 * resolution**2 <= h * w <= resolution**2


def test_the_2880_table_is_sigmas() -> None:
    """PixArt-Σ's ASPECT_RATIO_2880 (``diffusion/data/datasets/utils.py`` @9ba985e): 40 buckets of
    multiples of 64 with their own keys (not the other tables'); its keys are only roughly h/w
    (the extreme ones are off by up to 0.09, and some buckets hold 88% of 2880²), copied as they are."""
    table = B.table_for(2880)
    keys = list(table)
    assert len(keys) == 40
    assert (keys[0], keys[-1]) == ("0.25", "4.0")
    assert keys != list(B.ASPECT_RATIO_1024)
    assert [float(k) for k in keys] == sorted(float(k) for k in keys)
    for k, (h, w) in table.items():
        assert h % 64 == 0 and w % 64 == 0
        assert abs(h / w - float(k)) <= 0.1
        assert 0.87 * 2880**2 <= h * w <= 2880**2
    assert table["0.47"] == [1920.0, 4096.0]
    assert table["1.0"] == [2880.0, 2880.0]
    assert table["3.95"] == [5568.0, 1408.0]
    assert B.closest_bucket(1000, 2000, 2880).key == "0.49"
    assert S.check_resolution(2880) == 2880


def test_spot_check_values_against_pixart() -> None:
    assert B.ASPECT_RATIO_256["0.25"] == [128.0, 512.0]
    assert B.ASPECT_RATIO_256["4.0"] == [512.0, 128.0]
    assert B.ASPECT_RATIO_512["0.57"] == [384.0, 672.0]
    assert B.ASPECT_RATIO_512["1.0"] == [512.0, 512.0]
    assert B.ASPECT_RATIO_1024["0.57"] == [768.0, 1344.0]
    assert B.ASPECT_RATIO_1024["2.89"] == [1664.0, 576.0]
    assert B.ASPECT_RATIO_1024["1.46"] == [1216.0, 832.0]
    assert B.ASPECT_RATIO_2048["0.94"] == [1920.0, 2048.0]
    assert B.ASPECT_RATIO_2048["3.62"] == [3712.0, 1024.0]


def test_unknown_resolution_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid value for resolution: 768"):
        B.table_for(768)


def test_closest_bucket_equals_pixarts_choice_on_many_sizes() -> None:
    rng = random.Random(0)
    sizes = [(rng.randint(16, 4000), rng.randint(16, 4000)) for _ in range(3000)]
    sizes += list(itertools.product(range(100, 1001, 37), repeat=2))
    for res in (256, 1024):
        table = B.table_for(res)
        for h, w in sizes:
            size, ratio = pixart_get_closest_ratio(h, w, table)
            b = B.closest_bucket(h, w, table)
            assert (b.ratio, [float(b.height), float(b.width)]) == (ratio, size), (h, w)


def test_ties_go_to_the_smaller_ratio_as_with_pixarts_min() -> None:
    # 480/640 = 0.75, equally far (in floats too) from 0.72 and 0.78
    assert abs(0.72 - 0.75) == abs(0.78 - 0.75)
    assert B.closest_bucket(480, 640, 1024).key == "0.72"
    assert pixart_get_closest_ratio(480, 640, B.ASPECT_RATIO_1024)[1] == 0.72


def test_drop_rule_is_pixarts_ratio_at_most_four() -> None:
    assert B.drop_reason(400, 100) is None
    assert "over 4" in (B.drop_reason(401, 100) or "")
    assert B.drop_reason(100, 1000) is None  # PixArt keeps very wide images
    assert "under 0.25" in (B.drop_reason(100, 1000, min_ratio=0.25) or "")
    assert B.drop_reason(440, 100, max_ratio=B.PIXART_SIGMA_MAX_RATIO) is None
    assert B.drop_reason(0, 100) is not None


def test_resize_and_crop_box_follow_pixart_and_torchvision_formulas() -> None:
    rng = random.Random(1)
    for _ in range(3000):
        h, w = rng.randint(8, 5000), rng.randint(8, 5000)
        if B.drop_reason(h, w):
            continue
        res = rng.choice([256, 512, 1024, 2048])
        size, _ = pixart_get_closest_ratio(h, w, B.table_for(res))
        closest = [int(x) for x in size]
        rh, rw = pixart_resize_size(h, w, closest)
        box = B.crop_for_bucket(h, w, B.closest_bucket(h, w, res))
        assert (box.resized_h, box.resized_w) == (rh, rw)
        assert rh >= closest[0]
        assert rw >= closest[1]  # covers the bucket: no padding
        top, left = torchvision_center_crop_offsets(rh, rw, *closest)
        assert box.as_list() == [top, left, closest[0], closest[1]]
        assert 0 <= box.top <= rh - box.height
        assert 0 <= box.left <= rw - box.width


def test_centre_crop_rounds_half_to_even_like_torchvision() -> None:
    assert B.center_crop_box(101, 50, 100, 50).top == 0  # round(0.5) == 0
    assert B.center_crop_box(103, 50, 100, 50).top == 2  # round(1.5) == 2
    assert B.center_crop_box(50, 105, 50, 100).left == 2  # round(2.5) == 2


def test_a_crop_larger_than_the_image_pads_with_zeros_like_torchvision() -> None:
    box = B.center_crop_box(10, 10, 13, 12)
    # torchvision pads left/top by (c - s) // 2 and right/bottom by (c - s + 1) // 2, then crops at 0
    assert (box.top, box.left, box.height, box.width) == (-1, -1, 13, 12)
    img = Image.new("RGB", (10, 10), (200, 100, 50))
    out = np.asarray(B.apply_crop(img, box, Image.Resampling.BICUBIC))
    assert out.shape == (13, 12, 3)
    assert (out[0] == 0).all()
    assert (out[-2:] == 0).all()
    assert (out[1:11, 1:11] == (200, 100, 50)).all()


def resize_then_crop(img: Image.Image, box: B.CropBox) -> np.ndarray:
    """PixArt's transform the long way: bicubic resize of the whole image, then the crop."""
    full = img.resize((box.resized_w, box.resized_h), Image.Resampling.BICUBIC)
    return np.asarray(full.crop((box.left, box.top, box.left + box.width, box.top + box.height)))


def test_resize_and_crop_gives_the_bucket_size_and_pil_bicubic_pixels() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(533, 800, 3), dtype=np.uint8))
    bucket = B.closest_bucket(533, 800, 512)
    out, box = B.resize_and_crop(img, bucket)
    assert out.size == (bucket.width, bucket.height)
    np.testing.assert_array_equal(np.asarray(out), resize_then_crop(img, box))
    # A smaller (draft-decoded) image with the original size gives the same geometry.
    small = img.resize((400, 266))
    out2, box2 = B.resize_and_crop(small, bucket, orig_size=(800, 533))
    assert box2 == box
    assert out2.size == out.size


def test_a_very_wide_strip_is_resized_only_where_it_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """PixArt keeps images wider than 4:1 and scales them up to its widest bucket's height: a
    40000x8 strip would become 512x2,560,000 pixels at 1024 before the crop. Only the window
    that is kept is resized; the pixels match the resize-then-crop path within one level."""
    rng = np.random.default_rng(1)
    wide = Image.fromarray(rng.integers(0, 256, size=(20, 3000, 3), dtype=np.uint8))
    bucket = B.closest_bucket(20, 3000, 256)
    out, box = B.resize_and_crop(wide, bucket)
    assert out.size == (bucket.width, bucket.height)
    ref = resize_then_crop(wide, box)
    assert np.abs(np.asarray(out).astype(int) - ref.astype(int)).max() <= 1

    sizes: list[tuple[int, int]] = []
    real_resize = Image.Image.resize

    def recording(self, size, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(tuple(size))
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording)
    strip = Image.new("RGB", (40000, 8), (200, 10, 10))
    bucket = B.closest_bucket(8, 40000, 1024)
    out, box = B.resize_and_crop(strip, bucket)
    assert box.resized_w * box.resized_h > 10**9  # what resizing it whole would have made
    assert out.size == (bucket.width, bucket.height)
    assert max(w * h for w, h in sizes) == bucket.width * bucket.height
    assert np.asarray(out)[:, :, 0].min() >= 199  # the strip's colour, no zero padding


def test_single_scale_follows_torchvision_resize_int() -> None:
    # torchvision _compute_resized_output_size: short side -> size, long side int(size * long / short)
    assert B.short_side_size(480, 640, 256) == (256, int(256 * 640 / 480))
    assert B.short_side_size(640, 480, 256) == (int(256 * 640 / 480), 256)
    box = B.crop_for_square(480, 640, 256)
    assert (box.resized_h, box.resized_w, box.top, box.left) == (256, 341, 0, 42)
    img = Image.new("RGB", (640, 480))
    out, _ = B.resize_and_crop_square(img, 256)
    assert out.size == (256, 256)


def test_bucket_for_key_accepts_strings_and_floats() -> None:
    assert B.bucket_for_key("0.57", 1024) == B.Bucket("0.57", 768, 1344)
    assert B.bucket_for_key(np.float32(0.57), 1024).key == "0.57"
    with pytest.raises(KeyError):
        B.bucket_for_key("0.55", 1024)


def test_real_photos_get_buckets_that_their_crop_covers() -> None:
    folders = [SHARED / "sam", SHARED / "web_pairs" / "images"]
    files = [
        p for f in folders if f.is_dir() for p in sorted(f.iterdir()) if p.suffix.lower() in (".jpg", ".png")
    ]
    if not files:
        pytest.skip(f"real photos not found under {SHARED} (../shared/data is absent on this machine)")
    for path in files[:60]:
        with Image.open(path) as im:
            w, h = im.size
        for res in (256, 1024):
            b = B.closest_bucket(h, w, res)
            assert b.ratio == pixart_get_closest_ratio(h, w, B.table_for(res))[1]
            box = B.crop_for_bucket(h, w, b)
            assert box.resized_h >= b.height
            assert box.resized_w >= b.width
