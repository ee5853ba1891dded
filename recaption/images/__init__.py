"""Image bytes to pixels, safely: see :mod:`recaption.images.decode`."""

from recaption.images.decode import (
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    DecodeError,
    ImageInfo,
    decode_image,
    is_extreme_aspect,
    probe_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DecodeError",
    "DecodedImage",
    "ImageInfo",
    "decode_image",
    "is_extreme_aspect",
    "probe_image",
]
