"""``open_source``: from a path or URL to the right reader, detecting the layout.

Layouts recognised (``kind``):
- ``sam``: SA-1B tars ``sa_000000.tar`` or folders of ``sa_<id>.jpg`` + ``sa_<id>.json``;
- ``webdataset``: tar shards of ``<key>.jpg`` / ``.txt`` / ``.json`` (img2dataset's webdataset output);
- ``parquet``: parquet files with image bytes (img2dataset's parquet output);
- ``table``: parquet / JSON lines / CSV with captions and no images (LAION metadata ``URL``/``TEXT``);
- ``folder``: images with optional ``.txt``/``.json`` sidecars, img2dataset's ``files`` output included,
  or a caption manifest (Hugging Face imagefolder ``metadata.jsonl``/``.csv``, a JSON file mapping
  file names to captions);
- ``captions``: a folder of ``.txt`` captions alone (PixArt's released SAM-LLaVA captions).
"""

from __future__ import annotations

import tarfile

from recaption import io
from recaption.errors import ConfigError, SourceError
from recaption.images.formats import is_image_extension, unsupported_image_reason
from recaption.readers.base import SEVERITY_WARNING, Source
from recaption.readers.folder import FolderSource, list_folder
from recaption.readers.rows import TableUnreadable, is_table_name, read_schema
from recaption.readers.sam import SAM_KEY, SAM_TAR, SamSource, natural_key
from recaption.readers.table import (
    IMAGE_CANDIDATES,
    TEXT_CANDIDATES,
    TableSource,
    is_image_type,
    pick_column,
    read_schema_names,
)
from recaption.readers.tar import split_key
from recaption.readers.webdataset import WebDatasetSource

KINDS = ("auto", "sam", "webdataset", "parquet", "table", "folder", "captions")
DEFAULT_SHARD_SIZE = 1000
LAYOUTS = (
    "SA-1B tars (sa_000000.tar) or sa_<id>.jpg + sa_<id>.json files",
    "webdataset tars (<key>.jpg/.txt/.json)",
    "parquet with image bytes (img2dataset), or parquet/JSON lines/CSV with a caption column",
    "image files Pillow decodes (.jpg, .png, .webp, .tif, ...) with optional .txt/.json sidecars, "
    "or with a caption manifest (metadata.jsonl/.csv, captions.json)",
    "a folder of .txt captions",
)
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def _is_tar(url: str) -> bool:
    return url.lower().endswith(_TAR_SUFFIXES)


def _ext(url: str) -> str:
    base = io.basename(url)
    return base.rsplit(".", 1)[1].lower() if "." in base else ""


def _first_member(url: str) -> str:
    try:
        with io.open_file(url, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
            for info in tf:
                if info.isfile():
                    return info.name
    except (tarfile.TarError, OSError, EOFError):
        return ""
    return ""


def _looks_sam_tars(tars: list[str]) -> bool:
    if all(SAM_TAR.match(io.basename(t)) for t in tars):
        return True
    first = _first_member(tars[0])
    return bool(SAM_KEY.match(split_key(first.removeprefix("./"))[0].rsplit("/", 1)[-1])) if first else False


def _has_columns(uri: str) -> bool:
    try:
        return bool(read_schema(uri)[0])
    except (TableUnreadable, OSError, ValueError):
        return False


def _table_source(
    root: str,
    files: list[str],
    kind: str,
    text_column: str | None,
    image_column: str | None,
    key_column: str | None,
    shard_size: int | None,
) -> TableSource:
    # the columns are the first readable, non-empty file's: an empty or broken file sorted first is
    # that file's failure row when read, not a reason to refuse the whole folder
    probe = next((f for f in files if _has_columns(f)), files[0])
    names, types = read_schema_names(probe)
    img_col = image_column
    if img_col is None and kind != "table":
        img_col = next((c for c in IMAGE_CANDIDATES if c in names and is_image_type(types[c])), None)
    if image_column and image_column not in names:
        pick_column(names, image_column, IMAGE_CANDIDATES, "image", probe, True)
    if image_column and not probe.lower().endswith((".parquet", ".pq")):
        raise ConfigError(
            "--image-column",
            image_column,
            "parquet tables only",
            hint=f"{probe} holds text, not image bytes",
        )
    if kind == "parquet" and img_col is None:
        raise SourceError(
            probe,
            "no column of image bytes",
            [
                f"a binary column named one of "
                f"{', '.join(IMAGE_CANDIDATES)} (or name it: --image-column, source.image_column in a "
                f"pipeline file); columns: {', '.join(names)}"
            ],
        )
    text = pick_column(names, text_column, TEXT_CANDIDATES, "caption", probe, required=img_col is None)
    key = key_column or ("key" if "key" in names else None)
    if key_column and key_column not in names:
        pick_column(names, key_column, ("key",), "key", probe, True)
    resolved = "parquet" if img_col else "table"
    return TableSource(
        root=root,
        files=tuple(files),
        text_column=text,
        image_column=img_col,
        key_column=key,
        shard_size=shard_size,
        kind=resolved,
    )


def open_source(
    path: str,
    *,
    kind: str = "auto",
    shard_size: int | None = None,
    captions_dir: str | None = None,
    text_column: str | None = None,
    image_column: str | None = None,
    key_column: str | None = None,
) -> Source:
    """Open ``path`` (a file, a folder, a glob, any fsspec URL) as a :class:`Source`.

    Fails at once with :class:`SourceError` when the path does not exist or holds nothing
    recognisable, and with :class:`ConfigError` for an unknown ``kind``.
    """
    if kind not in KINDS:
        raise ConfigError("--kind", kind, KINDS)
    if shard_size is not None and shard_size < 1:
        raise ConfigError("--shard-size", shard_size, "a positive number of samples per shard")
    if captions_dir is not None and not io.isdir(captions_dir):
        raise SourceError(captions_dir, "captions folder does not exist", ["a folder of sa_<id>.txt files"])
    links: list[tuple[str, str, str]] = []
    if any(ch in path for ch in "*?["):
        files = io.glob(path)
        root = path
        if not files:
            raise SourceError(path, "the pattern matches no files", LAYOUTS)
    elif not io.exists(path):
        raise SourceError(path, "does not exist")
    elif io.isdir(path):
        root = io.normalize(path).rstrip("/")
        files, links = list_folder(root)
    else:
        root = io.normalize(path)
        files = [root]
    size = shard_size or DEFAULT_SHARD_SIZE
    source = _pick(
        path, root, files, kind, size, captions_dir, text_column, image_column, key_column, shard_size, links
    )
    # An option the chosen layout has no use for would be dropped without a word: refuse it.
    if captions_dir is not None and not isinstance(source, SamSource):
        raise ConfigError(
            "--captions-dir", captions_dir, "SA-1B sources only", hint=f"{path} is a {source.kind} source"
        )
    table_only = {"--text-column": text_column, "--image-column": image_column, "--key-column": key_column}
    if isinstance(source, FolderSource) and source.manifests:
        table_only.pop("--text-column")  # it names the caption column of the folder's manifest
    for option, value in table_only.items():
        if value is not None and not isinstance(source, TableSource):
            raise ConfigError(
                option,
                value,
                "table sources only (parquet, JSON lines, CSV)",
                hint=f"{path} is a {source.kind} source, whose captions come from its own files",
            )
    return source


def _pick(
    path: str,
    root: str,
    files: list[str],
    kind: str,
    size: int,
    captions_dir: str | None,
    text_column: str | None,
    image_column: str | None,
    key_column: str | None,
    shard_size: int | None,
    links: list[tuple[str, str, str]],
) -> Source:
    tars = sorted((f for f in files if _is_tar(f)), key=natural_key)
    tables = sorted(f for f in files if is_table_name(f) and not f.endswith("_stats.json"))
    images = [f for f in files if is_image_extension(_ext(f)) or unsupported_image_reason(_ext(f))]
    texts = [f for f in files if _ext(f) == "txt"]

    def want(*ks: str) -> bool:
        return kind == "auto" or kind in ks

    if captions_dir is not None:  # a captions folder inside the source is read as the captions
        inside = io.normalize(captions_dir).rstrip("/") + "/"
        files = [f for f in files if not f.startswith(inside)]
    if tars and want("sam", "webdataset"):
        # img2dataset's metadata beside each tar (00000.parquet, 00000_stats.json) is expected
        stems = {t[: -len(s)] for t in tars for s in _TAR_SUFFIXES if t.endswith(s)}
        beside = {f for f in files if f.endswith(".parquet") and f[: -len(".parquet")] in stems}
        beside |= {f for f in files if f.endswith("_stats.json") and f[: -len("_stats.json")] in stems}
        skipped = _not_read(files, set(tars) | beside, links, "a tar shard")
        if kind == "sam" or (kind == "auto" and _looks_sam_tars(tars)):
            return SamSource(root=root, tars=tuple(tars), captions_dir=captions_dir, skipped=skipped)
        return WebDatasetSource(root=root, tars=tuple(tars), skipped=skipped)
    if images and want("sam", "folder"):
        keys = [split_key(io.basename(f))[0] for f in images]
        if kind == "sam" or (kind == "auto" and all(SAM_KEY.match(s) for s in keys)):
            annotations = {f[: f.rfind(".")] + ".json" for f in images}
            return SamSource(
                root=root,
                images=tuple(sorted(images, key=natural_key)),
                shard_size=size,
                captions_dir=captions_dir,
                skipped=_not_read(
                    files, set(images) | annotations, links, "an SA-1B image or annotation file"
                ),
                annotations=frozenset(annotations.intersection(files)),
            )
        return FolderSource.scan(root, files, size, text_column=text_column, skipped=links)
    if tables and want("parquet", "table"):
        # img2dataset writes a metadata parquet beside each tar or shard folder: never a source by itself
        # when images are present (handled above).
        return _table_source(root, tables, kind, text_column, image_column, key_column, shard_size)
    if texts and want("captions"):
        return FolderSource.scan(root, files, size, captions_only=True, kind="captions", skipped=links)
    if kind != "auto":
        raise SourceError(path, f"holds nothing of kind {kind!r}", LAYOUTS)
    raise SourceError(path, "holds nothing recognisable" if files else "is empty", LAYOUTS)


def _not_read(
    files: list[str], used: set[str], links: list[tuple[str, str, str]], what: str
) -> tuple[tuple[str, str, str], ...]:
    """``(file, reason, severity)`` for every file a tar or SA-1B source does not read, and the
    links and special files the listing set aside: every file of the source is accounted for."""
    out = [(f, f"not {what} of this source; not read", SEVERITY_WARNING) for f in files if f not in used]
    return tuple(sorted(out + list(links)))
