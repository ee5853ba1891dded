"""``recaption export-captions RUN DEST``: the captions of a run in the layouts training tools read.

- ``txt``: one ``<name>.txt`` beside each ``<name>.<ext>`` image in ``DEST`` (kohya sd-scripts,
  OneTrainer and SimpleTuner read a folder of images with same-named caption files);
- ``jsonl``: Hugging Face ``imagefolder``: the images and a ``metadata.jsonl`` with ``file_name``
  and ``text`` (``datasets.load_dataset("imagefolder", data_dir=DEST)``).

Images are copied as they are (their original bytes, reopened from each row's reference: a file, a
tar member, a parquet cell), unless ``images="none"`` (captions only, for images that are already
in place under the same names). Each image keeps its own file name (spaces, any script, the
extension's case) and its folders below the source root (``10_dog/a photo.JPG``: kohya's repeat
folders), so a caption lands beside its image; a tar member keeps its member name. Where two images
would still get one name (the same member name in two tars, ``x.jpg`` and ``x.png`` members) the
later one, in shard order, gets ``-1``, ``-2``... so an export is the same on every rerun. Rows
without the chosen caption (captioning failed) are skipped and counted.
Existing files are never overwritten unless asked: a source folder's own ``.txt`` raw captions
are not lost to a mistyped DEST. The export holds DEST's lease (:mod:`recaption.shards.lease`) as a
run holds its output: a second export, or a run, into the same folder is refused at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from recaption import io
from recaption.errors import ConfigError, RecaptionError, SourceError

FORMATS = ("txt", "jsonl")
IMAGE_MODES = ("copy", "none")
#: ``--caption`` shorthands for the caption shard columns.
CAPTION_COLUMNS = {"dense": "dense_caption", "raw": "raw_caption"}
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


@dataclass
class ExportSummary:
    """What an export wrote."""

    dest: str
    format: str
    caption: str
    written: int = 0
    renamed: int = 0  # names changed to avoid a collision
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "dest": self.dest,
            "format": self.format,
            "caption": self.caption,
            "written": self.written,
            "renamed": self.renamed,
            "skipped": dict(self.skipped),
        }


def caption_folder(run: str) -> str:
    """The caption stage folder of ``run``: ``RUN/captions`` of a pipeline run, or ``run`` itself
    when it is a caption stage's output (``recaption caption``)."""
    from recaption.shards.layout import StageDir

    for url in (io.join(run, "captions"), run):
        stage = StageDir(url).stage_file
        if io.exists(stage) and json.loads(io.read_text(stage)).get("stage") == "caption":
            return url
    raise SourceError(
        run,
        "no caption shards here: give a `recaption run` output folder or a `recaption caption` output",
        ["captions/_stage.json", "_stage.json"],
    )


_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def _safe(name: str) -> str:
    """One path component from a file or member name, kept as it is (spaces, any script, the case)
    except what cannot be a file name: control characters, and a leading dot (a hidden file no
    training tool lists)."""
    name = _UNSAFE.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1]).lstrip(".").strip() or "image"
    return name[:200]


def _folders(row: dict[str, Any], stem: str) -> str:
    """The image's folder below the source root, ``""`` for none: the key's folders, where the key
    is the image's path without extension (a folder source's ``sub/dir/name``)."""
    key = str(row.get("key") or "")
    if "/" not in key or key.rsplit("/", 1)[1] != stem:
        return ""
    parts = [p for p in key.rsplit("/", 1)[0].split("/") if p]
    if any(p in (".", "..") for p in parts):
        return ""
    return "/".join(_safe(p) for p in parts) + "/" if parts else ""


def _split(name: str, *, any_ext: bool = False) -> tuple[str, str]:
    """``(stem, extension)``, the extension as the file has it (``.JPG`` stays ``.JPG``: the name
    must stay the image's own, for ``--images none`` beside the originals); ``any_ext``: any
    extension (a file the reader took as an image), else only the usual image ones."""
    dot = name.rfind(".")
    if dot > 0 and (any_ext or name[dot:].lower() in _IMAGE_EXTS) and "/" not in name[dot:]:
        return name[:dot], name[dot:]
    return name, ""


def image_name(row: dict[str, Any]) -> tuple[str, str]:
    """``(path, extension)`` for a caption row: the image's own file name, below the folders it has
    under the source root (``sub dir/ünï/café``, ``.png``), or its member name (extension ``""``
    when unknown), else its key."""
    member = row.get("image_member") or ""
    uri = row.get("image_uri") or ""
    if member and not member.startswith("row:"):
        stem, ext = _split(io.basename(member))
        return _safe(stem), ext
    if not member and uri:
        raw_stem, ext = _split(io.basename(uri), any_ext=True)
        if ext:
            return _folders(row, raw_stem) + _safe(raw_stem), ext
        # not an image file (a parquet of image bytes, say): name it by the key
    return _safe(str(row.get("key") or "image")), ""


def _sniff(data: bytes) -> str:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".img"


def _rows(folder: str, columns: list[str]) -> Iterator[dict[str, Any]]:
    """Caption rows in shard order (then row order), every data file of every finished shard."""
    import pyarrow.parquet as pq

    from recaption.shards.layout import PART_RE, StageDir

    def order(url: str) -> tuple[int, int]:
        m = PART_RE.match(io.basename(url))
        assert m is not None
        return int(m.group(1)), int(m.group(2) or -1)

    sd = StageDir(folder)
    files = sorted((u for u in sd.data_files() if not io.is_tmp(u)), key=order)
    if not files:
        raise SourceError(folder, "no finished caption shards yet", ["part-*.parquet"])
    for url in files:
        with io.open_file(url, "rb") as f:
            pf = pq.ParquetFile(f)
            have = set(pf.schema_arrow.names)
            if columns[0] not in have:
                raise ConfigError(
                    "--caption",
                    columns[0],
                    [
                        "dense",
                        "raw",
                        *sorted(c for c in have if "caption" in c and c not in CAPTION_COLUMNS.values()),
                    ],
                    hint=f"{url} has no column {columns[0]!r}",
                )
            table = pf.read(columns=[c for c in columns if c in have])
        yield from table.to_pylist()


def export_captions(
    run: str,
    dest: str,
    *,
    format: str = "txt",
    caption: str = "dense",
    images: str = "copy",
    caption_ext: str = ".txt",
    overwrite: bool = False,
) -> ExportSummary:
    """Export the captions of ``run`` (a run folder or a caption stage folder) into ``dest``.

    ``caption``: ``dense``, ``raw`` or any caption shard column; ``images``: ``copy`` (the image
    bytes, unchanged) or ``none``. See the module docstring for names and collisions.
    """
    from recaption.readers.base import ImageRef
    from recaption.readers.refs import ImageOpener, RefError
    from recaption.shards.lease import hold

    if format not in FORMATS:
        raise ConfigError("--format", format, FORMATS)
    if images not in IMAGE_MODES:
        raise ConfigError("--images", images, IMAGE_MODES)
    if not caption_ext.startswith(".") or "/" in caption_ext or len(caption_ext) < 2:
        raise ConfigError("--caption-ext", caption_ext, "an extension such as .txt or .caption")
    column = CAPTION_COLUMNS.get(caption, caption)
    folder = caption_folder(run)
    summary = ExportSummary(dest=dest, format=format, caption=column)
    cols = [column, "key", "error", "image_uri", "image_member", "image_offset", "image_length"]
    # One writer per folder, as for runs: a second export (or a run) into DEST is refused at once.
    with hold(dest, command="export-captions") as (lease,):
        used: set[str] = set()  # lower-cased stems taken (case-insensitive filesystems too)
        meta: list[dict[str, str]] = []
        opener = ImageOpener()

        def skip(reason: str) -> None:
            summary.skipped[reason] = summary.skipped.get(reason, 0) + 1

        def put(url: str, data: bytes) -> None:
            if not overwrite and io.exists(url):
                raise RecaptionError(
                    f"{url} exists; refusing to overwrite it (use another DEST, or --overwrite)"
                )
            io.write_bytes_atomic(url, data)

        meta_url = io.join(dest, "metadata.jsonl")
        if format == "jsonl" and not overwrite and io.exists(meta_url):
            raise RecaptionError(
                f"{meta_url} exists; refusing to overwrite it (use another DEST, or --overwrite)"
            )
        try:
            for row in _rows(folder, cols):
                lease.check()  # no I/O: stops soon after the heartbeat finds the lease taken over
                text = row.get(column)
                if row.get("error") or text is None:
                    skip("no caption (captioning failed)" if row.get("error") else f"no {column}")
                    continue
                if not str(text).strip():
                    skip(f"empty {column}")
                    continue
                stem, ext = image_name(row)
                data = b""
                if images == "copy":
                    ref = ImageRef.from_columns(row)
                    if ref is None:
                        skip("no image reference")
                        continue
                    try:
                        data = opener.read(ref)
                    except RefError as e:
                        skip(f"image not readable: {e}")
                        continue
                    ext = ext or _sniff(data)
                ext = ext or ".jpg"
                name, n = stem, 0
                while name.lower() in used:
                    n += 1
                    name = f"{stem}-{n}"
                summary.renamed += n > 0
                used.add(name.lower())
                if images == "copy":
                    put(io.join(dest, name + ext), data)
                if format == "txt":
                    put(io.join(dest, name + caption_ext), str(text).strip().encode("utf-8") + b"\n")
                else:
                    meta.append({"file_name": name + ext, "text": str(text).strip()})
                summary.written += 1
        finally:
            opener.close()
        if format == "jsonl":
            lines = "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in meta)
            lease.verify()  # the file that makes the export whole: never into another's folder
            io.write_text_atomic(meta_url, lines)
        return summary
