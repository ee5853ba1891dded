"""The images of an export, for PixArt configs that read pixels (``load_vae_feat=False``).

PixArt's loaders open ``os.path.join(root.replace('InternData', 'InternImgs'), item['path'])``
with torchvision's ``default_loader`` (``PIL.Image.open(f).convert('RGB')``: no EXIF orientation,
transparency dropped, not composited) and apply their training transform. The features were made
from :func:`recaption.images.decode.decode_image`'s pixels (EXIF orientation applied, alpha
composited on white, every mode to 8-bit RGB), so each image is written as those pixels, losslessly
(PNG), and both kinds of config train on the same pixels.

A source that is a plain local file and that ``default_loader`` already reads as the same pixels
(EXIF orientation 1, mode RGB or L: ``convert('RGB')`` is then what we decode) is hard-linked
where the filesystem allows, else symlinked, instead of written; PIL recognises a file by its
content, so a JPEG under the ``.png`` name PixArt's ``path`` gives it opens as that JPEG. Tar
members, parquet cells and remote files are always written.
"""

from __future__ import annotations

import io as _io
import os
from dataclasses import dataclass
from typing import Any

from recaption import interrupts, io
from recaption.images.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from recaption.readers.base import ImageRef

IMAGES_FROM = "InternData"
IMAGES_TO = "InternImgs"
# Modes whose PIL convert('RGB') is exactly what decode_image gives (no alpha, no 16-bit scaling).
_LINKABLE_MODES = ("RGB", "L")
# PNG is lossless at any level; 1 is several times faster to write than the default 6.
PNG_COMPRESS_LEVEL = 1


def images_root(root: str) -> str:
    """Where PixArt's loaders look for images: ``root.replace('InternData', 'InternImgs')``, the
    whole path string as they do it (a root without ``InternData`` keeps the images in itself)."""
    return root.replace(IMAGES_FROM, IMAGES_TO)


@dataclass(frozen=True)
class ImageWrite:
    """How one image was exported: ``"linked"``, ``"symlinked"`` or ``"written"``."""

    how: str


def _local_path(ref: ImageRef) -> str | None:
    """The local file behind ``ref`` when it is a whole plain file, else ``None``."""
    if ref.member or ref.offset >= 0 or ref.length >= 0:
        return None
    if io.protocol_of(ref.uri) not in ("file", "local"):
        return None
    _, path = io.fs_path(ref.uri)
    return path if os.path.isfile(path) else None


def _reads_the_same(data: bytes) -> bool:
    """``default_loader`` gives the pixels ``decode_image`` gives: no EXIF turn, a plain mode."""
    from PIL import Image

    try:
        with Image.open(_io.BytesIO(data)) as img:
            orientation = int(img.getexif().get(0x0112, 1) or 1)
            return orientation == 1 and img.mode in _LINKABLE_MODES
    except Exception:
        return False


def _link(src: str, dst: str) -> str | None:
    """Hard link, else symlink ``src`` at ``dst`` (replacing it); ``None`` when neither works."""
    tmp = io.tmp_name(dst)
    for how, fn in (("linked", os.link), ("symlinked", os.symlink)):
        with interrupts.deferred():  # the link and its rename as one step: no stray temporary
            try:
                fn(os.path.abspath(src), tmp)
            except OSError:
                continue
            os.replace(tmp, dst)
        return how
    return None


def png_bytes(image: Any) -> bytes:
    buf = _io.BytesIO()
    image.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def export_image(
    ref: ImageRef,
    data: bytes,
    dst: str,
    *,
    size: tuple[int, int],
    link: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ImageWrite:
    """Put the image of ``ref`` (its bytes: ``data``) at ``dst`` as the features saw it.

    ``size`` = the (width, height) the features recorded; a different decoded size (the file
    changed since it was encoded) raises :class:`ValueError` rather than pair other pixels with
    these features. :class:`~recaption.images.decode.DecodeError` when it no longer decodes.
    """
    decoded = decode_image(data, max_pixels=max_pixels)
    if (decoded.width, decoded.height) != tuple(size):
        raise ValueError(
            f"image: it is {decoded.width}x{decoded.height} now, {size[0]}x{size[1]} when it was "
            "encoded: it changed since, and its features no longer match it"
        )
    parent = os.path.dirname(dst) if "://" not in dst else None
    if link and parent is not None and io.protocol_of(dst) in ("file", "local"):
        src = _local_path(ref)
        if src is not None and _reads_the_same(data):
            os.makedirs(parent, exist_ok=True)
            how = _link(src, dst)
            if how is not None:
                return ImageWrite(how)
    io.write_bytes_atomic(dst, png_bytes(decoded.image))
    return ImageWrite("written")


__all__ = ["DecodeError", "ImageWrite", "export_image", "images_root", "png_bytes"]
