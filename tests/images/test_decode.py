from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from recaption.images.decode import (
    DecodeError,
    decode_image,
    is_extreme_aspect,
    probe_image,
    resize_max_pixels,
    resize_short_long,
)
from tests.builders import image_bytes, real_photos, truncated_jpeg


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_rgb_jpeg_roundtrip():
    d = decode_image(image_bytes(64, 48))
    assert d.image.mode == "RGB"
    assert (d.width, d.height) == (64, 48)
    assert d.image.size == (64, 48)
    assert d.format == "JPEG"


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("CMYK", "JPEG"),
        ("P", "PNG"),
        ("L", "PNG"),
        ("LA", "PNG"),
        ("RGBA", "PNG"),
        ("1", "PNG"),
        ("I;16", "PNG"),
    ],
)
def test_every_mode_becomes_rgb(mode: str, fmt: str):
    d = decode_image(image_bytes(40, 30, fmt=fmt, mode=mode))
    assert d.image.mode == "RGB"
    assert d.image.size == (40, 30)


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    d = decode_image(_save(img, "PNG"))
    assert d.image.getpixel((5, 5)) == (255, 255, 255)
    half = Image.new("RGBA", (20, 20), (0, 0, 0, 128))
    px = decode_image(_save(half, "PNG")).image.getpixel((5, 5))
    assert all(120 <= c <= 135 for c in px)


def test_palette_transparency_composited_on_white():
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0] * 256)
    img.info["transparency"] = 0
    d = decode_image(_save(img, "PNG", transparency=0))
    assert d.image.getpixel((1, 1)) == (255, 255, 255)


def test_16bit_is_scaled_not_clipped():
    arr = np.full((16, 16), 40000, dtype=np.uint16)  # 40000/65535 ≈ 61% grey
    img = Image.fromarray(arr)  # mode I;16
    d = decode_image(_save(img, "PNG"))
    v = d.image.getpixel((3, 3))[0]
    assert 150 <= v <= 160, v  # 40000 >> 8 = 156; a clip would give 255


def test_exif_orientation_applied_and_size_reported_oriented():
    img = Image.fromarray(np.zeros((30, 60, 3), dtype=np.uint8))  # 60 wide, 30 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° CW on display
    data = _save(img, "JPEG", exif=exif.tobytes())
    d = decode_image(data)
    assert (d.width, d.height) == (30, 60)
    assert d.image.size == (30, 60)
    assert (probe_image(data).width, probe_image(data).height) == (30, 60)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty file"),
        (b"this is a text file, not a JPEG", "not an image"),
        (truncated_jpeg(), "truncated"),
    ],
)
def test_bad_bytes_have_reasons(data: bytes, needle: str):
    with pytest.raises(DecodeError) as e:
        decode_image(data)
    assert needle in e.value.reason


def test_pixel_cap_refuses_before_decoding():
    big = _save(Image.new("RGB", (3000, 2000)), "PNG")
    with pytest.raises(DecodeError, match="over the pixel cap") as e:
        decode_image(big, max_pixels=5_000_000)
    # not "(max_pixels)": in the captioner that names Qwen2-VL's vision token budget, another thing
    assert "max_pixels" not in e.value.reason and "decompression bombs" in e.value.reason
    assert decode_image(big, max_pixels=6_000_000).width == 3000


def test_one_pixel_image_too_small():
    with pytest.raises(DecodeError, match="too small: 1x1"):
        decode_image(image_bytes(1, 1, fmt="PNG"))


def test_draft_mode_decodes_smaller_but_reports_original_size():
    data = image_bytes(1024, 768, quality=90)
    d = decode_image(data, draft_min_size=(200, 150))
    assert (d.width, d.height) == (1024, 768)
    assert d.draft_scale == 4
    assert d.image.size == (256, 192)
    # never smaller than requested
    d2 = decode_image(data, draft_min_size=(300, 200))
    assert d2.image.size[0] >= 300 and d2.image.size[1] >= 200


def test_draft_mode_on_real_photo_matches_full_decode_after_resize():
    photos = real_photos()
    if not photos:
        pytest.skip("real photos in ../shared/data/sam not available")
    data = photos[0].read_bytes()
    full = decode_image(data).image
    target = (full.width // 4, full.height // 4)
    fast = decode_image(data, draft_min_size=target).image
    a = np.asarray(full.resize(target, Image.Resampling.BICUBIC), dtype=np.float32)
    b = np.asarray(fast.resize(target, Image.Resampling.BICUBIC), dtype=np.float32)
    assert np.abs(a - b).mean() < 6.0


def test_extreme_aspect_and_resizers():
    assert is_extreme_aspect(100, 401) and is_extreme_aspect(401, 100)
    assert not is_extreme_aspect(100, 400)
    img = Image.new("RGB", (2000, 1000))
    assert resize_short_long(img, 400, 800).size == (800, 400)
    assert resize_max_pixels(img, 500_000).size[0] * resize_max_pixels(img, 500_000).size[1] <= 500_000
    assert resize_max_pixels(img, None) is img
