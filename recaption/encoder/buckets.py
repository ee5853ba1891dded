"""PixArt's aspect-ratio buckets and its training-time resize and crop, replicated exactly.

Sources (read, not imported: PixArt is not a dependency):

- the tables: ``diffusion/data/datasets/utils.py`` in PixArt-alpha/PixArt-alpha (256, 512, 1024) and
  PixArt-alpha/PixArt-sigma (the same three, plus 2048 and 2880). Keys are height/width ratios as strings
  (``'0.25'`` … ``'4.0'``), values ``[H, W]`` as floats, 40 buckets per table;
- the bucket rule: ``get_closest_ratio`` in ``diffusion/data/datasets/InternalData_ms.py``:
  ``min(ratios.keys(), key=lambda r: abs(float(r) - h / w))``. ``min`` returns the *first* key of
  equal distance, and the tables are in ascending order, so a tie goes to the smaller ratio;
- the drop rule: ``InternalData``/``InternalDataMS.__init__`` keep ``item['ratio'] <= 4``
  (``ratio`` = height/width from ``data_info.json``). Very *wide* images (ratio < 1/4) are **not**
  dropped by PixArt: they go to the ``0.25`` bucket. ``InternalDataMSSigma`` keeps ``<= 4.5``;
- the multi-scale training transform (``InternalDataMS.getdata``, ``load_vae_feat=False``)::

      if closest_size[0] / ori_h > closest_size[1] / ori_w:
          resize_size = closest_size[0], int(ori_w * closest_size[0] / ori_h)
      else:
          resize_size = int(ori_h * closest_size[1] / ori_w), closest_size[1]
      T.Resize(resize_size, interpolation=BICUBIC); T.CenterCrop(closest_size)
      T.ToTensor(); T.Normalize([.5], [.5])

- the single-scale transform (``default_train`` in ``diffusion/data/transforms.py``, used by the
  256/512 stages of PixArt-α): ``T.Resize(n_px)`` (shorter side to ``n_px``; torchvision's default
  interpolation, which is *bilinear*, despite the ``# Image.BICUBIC`` comment), ``T.CenterCrop(n_px)``.

torchvision on a PIL image calls ``PIL.Image.resize((w, h), filter)`` (always antialiased), so the
resizes below call PIL the same way. ``CenterCrop`` computes ``top = int(round((H - h) / 2.0))``
with Python's ``round`` (half to even), and pads with zeros where the image is smaller than the crop;
:func:`center_crop_box` follows both rules, and PIL's ``crop`` fills outside pixels with zeros too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recaption.errors import ConfigError

# Copied value for value from PixArt (see the module docstring); kept in PixArt's own layout.
# fmt: off
ASPECT_RATIO_256: dict[str, list[float]] = {
    '0.25': [128.0, 512.0], '0.26': [128.0, 496.0], '0.27': [128.0, 480.0], '0.28': [128.0, 464.0],
    '0.32': [144.0, 448.0], '0.33': [144.0, 432.0], '0.35': [144.0, 416.0], '0.4': [160.0, 400.0],
    '0.42': [160.0, 384.0], '0.48': [176.0, 368.0], '0.5': [176.0, 352.0], '0.52': [176.0, 336.0],
    '0.57': [192.0, 336.0], '0.6': [192.0, 320.0], '0.68': [208.0, 304.0], '0.72': [208.0, 288.0],
    '0.78': [224.0, 288.0], '0.82': [224.0, 272.0], '0.88': [240.0, 272.0], '0.94': [240.0, 256.0],
    '1.0': [256.0, 256.0], '1.07': [256.0, 240.0], '1.13': [272.0, 240.0], '1.21': [272.0, 224.0],
    '1.29': [288.0, 224.0], '1.38': [288.0, 208.0], '1.46': [304.0, 208.0], '1.67': [320.0, 192.0],
    '1.75': [336.0, 192.0], '2.0': [352.0, 176.0], '2.09': [368.0, 176.0], '2.4': [384.0, 160.0],
    '2.5': [400.0, 160.0], '2.89': [416.0, 144.0], '3.0': [432.0, 144.0], '3.11': [448.0, 144.0],
    '3.62': [464.0, 128.0], '3.75': [480.0, 128.0], '3.88': [496.0, 128.0], '4.0': [512.0, 128.0],
}
# fmt: on

# fmt: off
ASPECT_RATIO_512: dict[str, list[float]] = {
    '0.25': [256.0, 1024.0], '0.26': [256.0, 992.0], '0.27': [256.0, 960.0], '0.28': [256.0, 928.0],
    '0.32': [288.0, 896.0], '0.33': [288.0, 864.0], '0.35': [288.0, 832.0], '0.4': [320.0, 800.0],
    '0.42': [320.0, 768.0], '0.48': [352.0, 736.0], '0.5': [352.0, 704.0], '0.52': [352.0, 672.0],
    '0.57': [384.0, 672.0], '0.6': [384.0, 640.0], '0.68': [416.0, 608.0], '0.72': [416.0, 576.0],
    '0.78': [448.0, 576.0], '0.82': [448.0, 544.0], '0.88': [480.0, 544.0], '0.94': [480.0, 512.0],
    '1.0': [512.0, 512.0], '1.07': [512.0, 480.0], '1.13': [544.0, 480.0], '1.21': [544.0, 448.0],
    '1.29': [576.0, 448.0], '1.38': [576.0, 416.0], '1.46': [608.0, 416.0], '1.67': [640.0, 384.0],
    '1.75': [672.0, 384.0], '2.0': [704.0, 352.0], '2.09': [736.0, 352.0], '2.4': [768.0, 320.0],
    '2.5': [800.0, 320.0], '2.89': [832.0, 288.0], '3.0': [864.0, 288.0], '3.11': [896.0, 288.0],
    '3.62': [928.0, 256.0], '3.75': [960.0, 256.0], '3.88': [992.0, 256.0], '4.0': [1024.0, 256.0],
}
# fmt: on

# fmt: off
ASPECT_RATIO_1024: dict[str, list[float]] = {
    '0.25': [512., 2048.], '0.26': [512., 1984.], '0.27': [512., 1920.], '0.28': [512., 1856.],
    '0.32': [576., 1792.], '0.33': [576., 1728.], '0.35': [576., 1664.], '0.4': [640., 1600.],
    '0.42': [640., 1536.], '0.48': [704., 1472.], '0.5': [704., 1408.], '0.52': [704., 1344.],
    '0.57': [768., 1344.], '0.6': [768., 1280.], '0.68': [832., 1216.], '0.72': [832., 1152.],
    '0.78': [896., 1152.], '0.82': [896., 1088.], '0.88': [960., 1088.], '0.94': [960., 1024.],
    '1.0': [1024., 1024.], '1.07': [1024., 960.], '1.13': [1088., 960.], '1.21': [1088., 896.],
    '1.29': [1152., 896.], '1.38': [1152., 832.], '1.46': [1216., 832.], '1.67': [1280., 768.],
    '1.75': [1344., 768.], '2.0': [1408., 704.], '2.09': [1472., 704.], '2.4': [1536., 640.],
    '2.5': [1600., 640.], '2.89': [1664., 576.], '3.0': [1728., 576.], '3.11': [1792., 576.],
    '3.62': [1856., 512.], '3.75': [1920., 512.], '3.88': [1984., 512.], '4.0': [2048., 512.],
}
# fmt: on

# PixArt-Σ only.
# fmt: off
ASPECT_RATIO_2048: dict[str, list[float]] = {
    '0.25': [1024.0, 4096.0], '0.26': [1024.0, 3968.0], '0.27': [1024.0, 3840.0], '0.28': [1024.0, 3712.0],
    '0.32': [1152.0, 3584.0], '0.33': [1152.0, 3456.0], '0.35': [1152.0, 3328.0], '0.4': [1280.0, 3200.0],
    '0.42': [1280.0, 3072.0], '0.48': [1408.0, 2944.0], '0.5': [1408.0, 2816.0], '0.52': [1408.0, 2688.0],
    '0.57': [1536.0, 2688.0], '0.6': [1536.0, 2560.0], '0.68': [1664.0, 2432.0], '0.72': [1664.0, 2304.0],
    '0.78': [1792.0, 2304.0], '0.82': [1792.0, 2176.0], '0.88': [1920.0, 2176.0], '0.94': [1920.0, 2048.0],
    '1.0': [2048.0, 2048.0], '1.07': [2048.0, 1920.0], '1.13': [2176.0, 1920.0], '1.21': [2176.0, 1792.0],
    '1.29': [2304.0, 1792.0], '1.38': [2304.0, 1664.0], '1.46': [2432.0, 1664.0], '1.67': [2560.0, 1536.0],
    '1.75': [2688.0, 1536.0], '2.0': [2816.0, 1408.0], '2.09': [2944.0, 1408.0], '2.4': [3072.0, 1280.0],
    '2.5': [3200.0, 1280.0], '2.89': [3328.0, 1152.0], '3.0': [3456.0, 1152.0], '3.11': [3584.0, 1152.0],
    '3.62': [3712.0, 1024.0], '3.75': [3840.0, 1024.0], '3.88': [3968.0, 1024.0], '4.0': [4096.0, 1024.0],
}
# fmt: on

# PixArt-Σ only (its 2.8K stage; ``diffusion/data/datasets/utils.py`` @9ba985e). Its keys are not
# the other tables' (0.34, 0.47, 0.49...): the ratios of its own [H, W] pairs, multiples of 64.
# fmt: off
ASPECT_RATIO_2880: dict[str, list[float]] = {
    '0.25': [1408.0, 5760.0], '0.26': [1408.0, 5568.0], '0.27': [1408.0, 5376.0], '0.28': [1408.0, 5184.0],
    '0.32': [1600.0, 4992.0], '0.33': [1600.0, 4800.0], '0.34': [1600.0, 4672.0], '0.4': [1792.0, 4480.0],
    '0.42': [1792.0, 4288.0], '0.47': [1920.0, 4096.0], '0.49': [1920.0, 3904.0], '0.51': [1920.0, 3776.0],
    '0.55': [2112.0, 3840.0], '0.59': [2112.0, 3584.0], '0.68': [2304.0, 3392.0], '0.72': [2304.0, 3200.0],
    '0.78': [2496.0, 3200.0], '0.83': [2496.0, 3008.0], '0.89': [2688.0, 3008.0], '0.93': [2688.0, 2880.0],
    '1.0': [2880.0, 2880.0], '1.07': [2880.0, 2688.0], '1.12': [3008.0, 2688.0], '1.21': [3008.0, 2496.0],
    '1.28': [3200.0, 2496.0], '1.39': [3200.0, 2304.0], '1.47': [3392.0, 2304.0], '1.7': [3584.0, 2112.0],
    '1.82': [3840.0, 2112.0], '2.03': [3904.0, 1920.0], '2.13': [4096.0, 1920.0], '2.39': [4288.0, 1792.0],
    '2.5': [4480.0, 1792.0], '2.92': [4672.0, 1600.0], '3.0': [4800.0, 1600.0], '3.12': [4992.0, 1600.0],
    '3.68': [5184.0, 1408.0], '3.82': [5376.0, 1408.0], '3.95': [5568.0, 1408.0], '4.0': [5760.0, 1408.0],
}
# fmt: on

TABLES: dict[int, dict[str, list[float]]] = {
    256: ASPECT_RATIO_256,
    512: ASPECT_RATIO_512,
    1024: ASPECT_RATIO_1024,
    2048: ASPECT_RATIO_2048,
    2880: ASPECT_RATIO_2880,
}

# PixArt-α's loaders keep ``ratio <= 4``; PixArt-Σ's ``InternalDataMSSigma`` keeps ``ratio <= 4.5``.
PIXART_ALPHA_MAX_RATIO = 4.0
PIXART_SIGMA_MAX_RATIO = 4.5


def table_for(resolution: int) -> dict[str, list[float]]:
    """PixArt's ``ASPECT_RATIO_{resolution}`` table; :class:`ConfigError` for other resolutions."""
    try:
        return TABLES[int(resolution)]
    except (KeyError, TypeError, ValueError):
        raise ConfigError("resolution", resolution, sorted(TABLES)) from None


@dataclass(frozen=True)
class Bucket:
    """One aspect-ratio bucket: PixArt's string ``key`` (height/width), its float, and ``[H, W]``."""

    key: str
    height: int
    width: int

    @property
    def ratio(self) -> float:
        """``float(key)``: what PixArt puts in ``data_info['aspect_ratio']``."""
        return float(self.key)


def closest_bucket(height: float, width: float, table: Mapping[str, Any] | int) -> Bucket:
    """The bucket PixArt's ``get_closest_ratio`` picks for an image of ``height`` × ``width``.

    ``table`` is a PixArt table or a resolution. Ties go to the earlier (smaller) key, as with
    PixArt's ``min`` over the dict's keys.
    """
    tab = table_for(table) if isinstance(table, int) else table
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width} (height x width)")
    aspect_ratio = height / width
    key = min(tab.keys(), key=lambda ratio: abs(float(ratio) - aspect_ratio))
    h, w = tab[key]
    return Bucket(key=key, height=int(h), width=int(w))


def bucket_for_key(key: str | float, resolution: int) -> Bucket:
    """The bucket of ``resolution`` whose key is ``key`` (a string like ``'0.57'``, or its value as a
    float or float32)."""
    tab = table_for(resolution)
    if isinstance(key, str) and key in tab:
        h, w = tab[key]
        return Bucket(key=key, height=int(h), width=int(w))
    for k, (h, w) in tab.items():
        # Tolerant of float32 storage (vae_R_ratio): keys are 0.01 apart.
        if abs(float(k) - float(key)) < 1e-4:
            return Bucket(key=k, height=int(h), width=int(w))
    raise KeyError(f"no bucket with ratio {key!r} in ASPECT_RATIO_{resolution}")


def drop_reason(
    height: int, width: int, max_ratio: float = PIXART_ALPHA_MAX_RATIO, min_ratio: float | None = None
) -> str | None:
    """Why PixArt's loaders would drop this image, or ``None`` if they keep it.

    PixArt keeps ``height / width <= max_ratio`` (4 for α); it keeps very wide images. Pass
    ``min_ratio`` (e.g. 0.25) to also drop those, which PixArt itself does not do.
    """
    if height <= 0 or width <= 0:
        return f"image has an empty size {width}x{height} (width x height)"
    r = height / width
    if r > max_ratio:
        return (
            f"aspect ratio height/width = {height}/{width} = {r:.3f} is over {max_ratio:g}; "
            f"PixArt's loaders drop such images (they keep ratio <= {max_ratio:g})"
        )
    if min_ratio is not None and r < min_ratio:
        return (
            f"aspect ratio height/width = {height}/{width} = {r:.3f} is under {min_ratio:g} "
            "(min_ratio option; PixArt itself would keep it in its widest bucket)"
        )
    return None


@dataclass(frozen=True)
class CropBox:
    """Where the training crop comes from: the resized size, then ``[top, left, height, width]``.

    Coordinates are in the resized image. ``top``/``left`` are negative only where torchvision's
    ``CenterCrop`` would zero-pad (the resized image smaller than the crop), which PixArt's own
    formulas can produce only through floating-point rounding.
    """

    resized_h: int
    resized_w: int
    top: int
    left: int
    height: int
    width: int

    def as_list(self) -> list[int]:
        """``[top, left, height, width]``, the schema's ``vae_{R}_crop``."""
        return [self.top, self.left, self.height, self.width]


def resize_size(orig_h: int, orig_w: int, bucket_h: int, bucket_w: int) -> tuple[int, int]:
    """PixArt's ``resize_size`` (height, width): cover the bucket keeping the aspect ratio.

    Same float operations in the same order as ``InternalDataMS.getdata``, then ``int`` (truncation).
    """
    if bucket_h / orig_h > bucket_w / orig_w:
        return bucket_h, int(orig_w * bucket_h / orig_h)
    return int(orig_h * bucket_w / orig_w), bucket_w


def short_side_size(orig_h: int, orig_w: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)`` with an int: shorter side to ``size``, longer side truncated."""
    short, long = (orig_w, orig_h) if orig_w <= orig_h else (orig_h, orig_w)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if orig_w <= orig_h else (new_short, new_long)


def center_crop_box(resized_h: int, resized_w: int, crop_h: int, crop_w: int) -> CropBox:
    """torchvision ``CenterCrop((crop_h, crop_w))`` on an image of ``resized_h`` × ``resized_w``.

    torchvision first zero-pads a too-small side by ``(c - s) // 2`` before and ``(c - s + 1) // 2``
    after, then crops at ``int(round((size - crop) / 2.0))`` (Python's round: half to even).
    """
    pad_top = (crop_h - resized_h) // 2 if crop_h > resized_h else 0
    pad_left = (crop_w - resized_w) // 2 if crop_w > resized_w else 0
    padded_h = resized_h + (pad_top + (crop_h - resized_h + 1) // 2 if crop_h > resized_h else 0)
    padded_w = resized_w + (pad_left + (crop_w - resized_w + 1) // 2 if crop_w > resized_w else 0)
    # torchvision: int(round(x)); round() of a float already returns an int (half to even).
    top = round((padded_h - crop_h) / 2.0) - pad_top
    left = round((padded_w - crop_w) / 2.0) - pad_left
    return CropBox(resized_h, resized_w, top, left, crop_h, crop_w)


def crop_for_bucket(orig_h: int, orig_w: int, bucket: Bucket) -> CropBox:
    """The resize and crop PixArt's multi-scale training applies for ``bucket``."""
    rh, rw = resize_size(orig_h, orig_w, bucket.height, bucket.width)
    return center_crop_box(rh, rw, bucket.height, bucket.width)


def stretch_box(bucket: Bucket) -> CropBox:
    """PixArt's ``tools/extract_features.py --multi_scale``: ``T.Resize(closest_size)`` straight to
    the bucket (the aspect ratio is not kept), so its ``T.CenterCrop(closest_size)`` cuts nothing."""
    return CropBox(bucket.height, bucket.width, 0, 0, bucket.height, bucket.width)


def crop_for_square(orig_h: int, orig_w: int, size: int) -> CropBox:
    """The resize and crop of PixArt's single-scale ``default_train`` transform."""
    rh, rw = short_side_size(orig_h, orig_w, size)
    return center_crop_box(rh, rw, size, size)


# Above this many resized pixels per kept pixel, only the crop window is resized (see apply_crop).
_WINDOW_RESIZE_ABOVE = 2.0


def apply_crop(img: Any, box: CropBox, resample: Any) -> Any:
    """Resize a PIL image to the box's resized size and cut the box out (zero fill outside).

    Images inside PixArt's ratio range are resized whole and then cropped, exactly as PixArt does
    (the resized image is at most ~1.1x the crop there). A very wide image is kept by PixArt and
    scaled up to cover its bucket's height first: a 40000x8 strip would become 512x2,560,000 at
    1024 (3.7 GiB) only for most of it to be cropped away. For those, Pillow resizes just the
    source window that maps onto the crop (same sample positions and filter; rounding may differ
    by one level), so memory stays at the crop's size.
    """
    if (
        img.size != (box.resized_w, box.resized_h)
        and box.resized_w * box.resized_h > _WINDOW_RESIZE_ABOVE * box.width * box.height
        and box.top >= 0
        and box.left >= 0
    ):
        sx, sy = img.width / box.resized_w, img.height / box.resized_h
        window = (
            box.left * sx,
            box.top * sy,
            (box.left + box.width) * sx,
            (box.top + box.height) * sy,
        )
        return img.resize((box.width, box.height), resample, box=window)
    if img.size != (box.resized_w, box.resized_h):
        img = img.resize((box.resized_w, box.resized_h), resample)
    if (box.top, box.left, box.height, box.width) == (0, 0, box.resized_h, box.resized_w):
        return img
    return img.crop((box.left, box.top, box.left + box.width, box.top + box.height))


def resize_and_crop(
    img: Any, bucket: Bucket, orig_size: tuple[int, int] | None = None
) -> tuple[Any, CropBox]:
    """PixArt-MS's training transform on a PIL RGB image: bicubic resize to cover, centre crop.

    ``orig_size`` = (width, height) of the original image when ``img`` was decoded smaller (JPEG
    draft mode): the bucket and the resize target are PixArt's, computed from the original size.
    Returns the cropped image (exactly ``bucket.width`` × ``bucket.height``) and the crop box.
    """
    from PIL import Image

    w, h = orig_size if orig_size is not None else img.size
    box = crop_for_bucket(h, w, bucket)
    return apply_crop(img, box, Image.Resampling.BICUBIC), box


def resize_and_crop_square(
    img: Any, size: int, orig_size: tuple[int, int] | None = None
) -> tuple[Any, CropBox]:
    """PixArt's single-scale ``default_train``: shorter side to ``size`` (bilinear), centre crop."""
    from PIL import Image

    w, h = orig_size if orig_size is not None else img.size
    box = crop_for_square(h, w, size)
    return apply_crop(img, box, Image.Resampling.BILINEAR), box
