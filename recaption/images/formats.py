"""Which file extensions are images this installation decodes, and why others are not read.

The list is Pillow's own (``Image.registered_extensions()`` of the formats it opens), so a file is
read whatever the case or spelling of its extension (``.JPG``, ``.jfif``, ``.jpe``, ``.tif``) and a
plugin installed later (AVIF, HEIF through ``pillow-heif``) is picked up without a change here.
Formats Pillow only identifies without decoding (its "stub" plugins, MPEG video) are left out.
Image formats it cannot decode here get a reason a person can act on.
"""

from __future__ import annotations

import functools

# Most common first: a webdataset sample with two image members keeps the first of these it has.
_PREFERRED = ("jpg", "jpeg", "png", "webp")
# Pillow identifies these but cannot decode their pixels.
_NOT_DECODED = {"BUFR", "GRIB", "HDF5", "WMF", "MPEG"}
# Image formats people keep in collections that Pillow does not decode without a plugin.
_KNOWN_UNSUPPORTED = {
    "heic": "HEIC/HEIF (install pillow-heif and register it to read these)",
    "heif": "HEIC/HEIF (install pillow-heif and register it to read these)",
    "hif": "HEIC/HEIF (install pillow-heif and register it to read these)",
    "avif": "AVIF (a Pillow built with AVIF support, 11.2 or later, reads these)",
    "avifs": "AVIF (a Pillow built with AVIF support, 11.2 or later, reads these)",
    "jxl": "JPEG XL (install pillow-jxl-plugin to read these)",
    "svg": "SVG (a vector drawing: rasterise it first)",
    "svgz": "SVG (a vector drawing: rasterise it first)",
    "pdf": "PDF (a document: render its pages first)",
}
_RAW = ("arw", "cr2", "cr3", "crw", "dng", "nef", "nrw", "orf", "raf", "rw2", "pef", "srw", "x3f")


@functools.cache
def image_extensions() -> tuple[str, ...]:
    """Lower-case extensions (no dot) of every format this Pillow decodes, common ones first."""
    from PIL import Image

    Image.init()
    exts = {
        ext.lstrip(".").lower()
        for ext, fmt in Image.registered_extensions().items()
        if fmt in Image.OPEN and fmt not in _NOT_DECODED
    }
    return tuple(e for e in _PREFERRED if e in exts) + tuple(sorted(exts - set(_PREFERRED)))


def is_image_extension(ext: str) -> bool:
    """Whether a file with this extension (any case, no dot) is an image this Pillow decodes."""
    return ext.lower() in _image_set()


@functools.cache
def _image_set() -> frozenset[str]:
    return frozenset(image_extensions())


def unsupported_image_reason(ext: str) -> str | None:
    """Why a file with this image extension is not read, or ``None`` if it is no known image format."""
    ext = ext.lower()
    if is_image_extension(ext):
        return None
    what = _KNOWN_UNSUPPORTED.get(ext) or (f"camera raw .{ext} (convert it first)" if ext in _RAW else None)
    if what is None:
        return None
    return f"unsupported image format .{ext}: {what}; this Pillow has no decoder for it"
