"""Safe image decoding: the only place image bytes become pixels.

Every stage that needs pixels calls :func:`decode_image`. It
- checks the pixel count from the header *before* decoding (decompression bombs),
- applies the EXIF orientation, so sizes are what a viewer shows,
- converts every mode to 8-bit RGB (CMYK, palette, 16-bit, grayscale; alpha composited on white),
- uses JPEG draft mode (DCT scaling) when only a smaller image is needed, which is several
  times faster than decoding full size and resizing.

Failures raise :class:`DecodeError` whose ``reason`` is a sentence a person understands.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Our own cap replaces Pillow's global one: checked from the header, with a clear reason.
Image.MAX_IMAGE_PIXELS = None
# Truncated files must fail, not be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # 67 MP: well above SA-1B (~3.4 MP) and real LAION photos
DEFAULT_MIN_SIDE = 8
# PixArt's buckets span height/width 0.25..4. Its loaders drop images over 4 (tall); wider ones
# than 1/4 they keep, in the 0.25 bucket, centre-cropping most of the width away.
PIXART_MAX_ASPECT = 4.0

# EXIF orientations 5-8 swap width and height.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


class DecodeError(Exception):
    """An image that cannot be used. ``reason`` says why, in words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, after EXIF orientation."""

    width: int
    height: int
    format: str
    mode: str


@dataclass
class DecodedImage:
    """An RGB image and what it was before decoding."""

    image: Image.Image
    width: int  # original width, EXIF orientation applied
    height: int  # original height, EXIF orientation applied
    format: str
    mode: str  # the original pixel mode (e.g. "CMYK", "P", "I;16")
    draft_scale: int = 1  # 1, 2, 4 or 8 when JPEG draft mode shrank the decode


def _describe_head(data: bytes) -> str:
    head = data[:16]
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"it starts with text {head.decode('ascii')!r}"
    return f"first bytes {head.hex(' ')}"


def _open(data: bytes) -> Image.Image:
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError(
            f"not an image: no known image format ({_describe_head(data)}, {len(data)} bytes)"
        ) from None
    except Exception as e:
        raise DecodeError(f"unreadable image header: {type(e).__name__}: {e}") from None


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    w, h = img.size
    return (h, w) if _orientation(img) in _TRANSPOSED_ORIENTATIONS else (w, h)


def _check_size(w: int, h: int, max_pixels: int | None, min_side: int) -> None:
    if w <= 0 or h <= 0:
        raise DecodeError(f"image header gives an empty size {w}x{h}")
    if max_pixels is not None and w * h > max_pixels:
        raise DecodeError(
            f"image is {w}x{h} = {w * h / 1e6:.1f} MP, over the pixel cap of "
            f"{max_pixels / 1e6:.1f} MP (a guard against decompression bombs); refused before decoding"
        )
    if min(w, h) < min_side:
        raise DecodeError(f"image is too small: {w}x{h} (the shorter side must be at least {min_side} px)")


def probe_image(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_side: int = 1) -> ImageInfo:
    """Read only the header: format, mode and oriented size. Does not decode pixels."""
    img = _open(data)
    w, h = _oriented_size(img)
    _check_size(w, h, max_pixels, min_side)
    return ImageInfo(width=w, height=h, format=str(img.format or ""), mode=str(img.mode))


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img)
        # 16-bit data: keep the high byte. Pillow's convert("L") clips at 255 instead of scaling.
        if arr.dtype != np.uint8:
            arr = arr.astype(np.int64)
            peak = int(arr.max()) if arr.size else 0
            shift = 8 if peak > 255 else 0
            arr = np.clip(arr >> shift, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) if arr.size else 1.0
        scale = 255.0 if hi <= 1.0 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "RGBA" or "A" in mode):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # CMYK, YCbCr, LAB, HSV, L, 1 ...
    return img.convert("RGB")


def decode_image(
    data: bytes,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    draft_min_size: tuple[int, int] | Callable[[int, int], tuple[int, int]] | None = None,
) -> DecodedImage:
    """Decode bytes into an 8-bit RGB image, or raise :class:`DecodeError`.

    ``draft_min_size``: ``(width, height)`` after EXIF orientation that the caller will resize
    to, or a function of the original ``(width, height)`` returning it (the size is read from the
    header first, so the caller need not decode twice). For JPEG, the decoder then scales the DCT
    by 1/2, 1/4 or 1/8 as long as the result still covers that size, so the later resize loses
    nothing. ``None`` decodes at full size.
    """
    img = _open(data)
    fmt = str(img.format or "")
    orig_mode = str(img.mode)
    w, h = _oriented_size(img)
    _check_size(w, h, max_pixels, min_side)
    orientation = _orientation(img)
    scale = 1
    if draft_min_size is not None and fmt == "JPEG":
        tw, th = draft_min_size(w, h) if callable(draft_min_size) else draft_min_size
        if orientation in _TRANSPOSED_ORIENTATIONS:
            tw, th = th, tw
        raw_w, raw_h = img.size
        # draft() picks the largest reduction that keeps the image at least this size.
        req = (max(1, math.ceil(tw)), max(1, math.ceil(th)))
        if req[0] < raw_w and req[1] < raw_h:
            try:
                img.draft("RGB" if img.mode in ("RGB", "YCbCr") else img.mode, req)
                scale = max(1, round(raw_w / img.size[0]))
            except Exception:
                scale = 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except OSError as e:
        msg = str(e)
        if "truncated" in msg.lower() or "premature" in msg.lower():
            raise DecodeError(f"truncated image: the file ends before the image data does ({msg})") from None
        raise DecodeError(f"corrupt image data: {msg}") from None
    except Exception as e:
        raise DecodeError(f"corrupt image data: {type(e).__name__}: {e}") from None
    if orientation != 1:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as e:
            raise DecodeError(f"cannot apply EXIF orientation {orientation}: {e}") from None
    try:
        rgb = _to_rgb(img)
    except Exception as e:
        raise DecodeError(f"cannot convert pixel mode {orig_mode!r} to RGB: {e}") from None
    return DecodedImage(image=rgb, width=w, height=h, format=fmt, mode=orig_mode, draft_scale=scale)


def resize_max_pixels(img: Image.Image, max_pixels: int | None) -> Image.Image:
    """Shrink (never enlarge) to at most ``max_pixels``, keeping the aspect ratio (bicubic)."""
    if max_pixels is None:
        return img
    w, h = img.size
    if w * h <= max_pixels:
        return img
    s = math.sqrt(max_pixels / (w * h))
    return img.resize((max(1, int(w * s)), max(1, int(h * s))), Image.Resampling.BICUBIC)


def resize_short_long(img: Image.Image, short: int, long: int) -> Image.Image:
    """Shrink so that the short side is at most ``short`` and the long side at most ``long``.

    PixArt's captioning script resized SAM images this way (short ≤ 400, long ≤ 800).
    """
    w, h = img.size
    s = min(1.0, short / min(w, h), long / max(w, h))
    if s >= 1.0:
        return img
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)


def aspect_ratio(width: int, height: int) -> float:
    """Height over width, PixArt's convention for bucket keys."""
    return height / width


def is_extreme_aspect(width: int, height: int, max_ratio: float = PIXART_MAX_ASPECT) -> bool:
    """True beyond PixArt's bucket range either way (see :func:`extreme_aspect_reason`)."""
    r = height / width
    return r > max_ratio or r < 1.0 / max_ratio


def extreme_aspect_reason(width: int, height: int, max_ratio: float = PIXART_MAX_ASPECT) -> str | None:
    """What PixArt does with an image beyond its bucket range, in words; ``None`` inside it."""
    r = height / width
    if r > max_ratio:
        return f"height/width {r:.2f} ({width}x{height}) is over PixArt's {max_ratio:g}: PixArt drops it"
    if r < 1.0 / max_ratio:
        kept = r * max_ratio  # cover-resize to the 1/max_ratio bucket, then centre-crop the width
        return (
            f"height/width {r:.2f} ({width}x{height}) is under 1/{max_ratio:g}: PixArt keeps it in its "
            f"widest bucket, cropping {100 * (1 - kept):.0f}% of the width away"
        )
    return None
