"""Folders of images with optional sidecars (``photo.jpg`` + ``photo.txt`` caption + ``photo.json``
metadata), including img2dataset's ``files`` output (``00000/000000012.jpg`` ... beside
``00000.parquet``), and folders of captions alone (``sa_<id>.txt``: PixArt's SAM-LLaVA release).

Keys are paths relative to the root without extension (``sub/photo``). Shards are the img2dataset
shard folders where they exist, else chunks of ``shard_size`` files in sorted order.

Captions, first found wins: the ``.txt`` sidecar; a caption manifest of the folder (Hugging Face
imagefolder's ``metadata.jsonl`` / ``metadata.csv``: ``file_name`` + a text column, or a JSON file
mapping file names to captions, ``{file: caption}`` or a list of records such as
``{"image": ..., "caption": ...}``); the ``caption`` field of the ``.json`` sidecar.

Every file is accounted for: a sample, a sidecar or manifest, or a manifest row saying why it was
not read (a format Pillow does not decode, a broken link, a directory symlink, which is not
followed). Files are read a window at a time on a thread pool (:mod:`~recaption.readers.fetch`), so
a folder on an object store is not read one request after another.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from recaption import io
from recaption.images.formats import is_image_extension, unsupported_image_reason
from recaption.readers.base import (
    SEVERITY_ERROR,
    SEVERITY_WARNING,
    Failure,
    ImageRef,
    InputShard,
    Sample,
    Source,
)
from recaption.readers.common import caption_from_bytes, json_safe, parse_json_sidecar
from recaption.readers.fetch import WindowReader
from recaption.readers.refs import RefError

STAGE = "read"
MANIFEST_NAMES = ("metadata.jsonl", "metadata.csv")  # Hugging Face imagefolder
FILE_COLUMNS = ("file_name", "image", "file", "filename", "path", "image_path", "file_path")
MANIFEST_TEXT = ("text", "caption", "txt", "TEXT", "Caption", "prompt")


def _rel(root: str, url: str) -> str:
    r = root.rstrip("/")
    return url[len(r) + 1 :] if url.startswith(r + "/") else posixpath.basename(url)


def _stem(path: str) -> str:
    head, base = posixpath.split(path)
    stem = base.rsplit(".", 1)[0] if "." in base else base
    # a name that is all extension (".jpg", ".DS_Store") keeps its whole name: never an empty key
    stem = stem or base
    return posixpath.join(head, stem) if head else stem


def _ext(path: str) -> str:
    base = posixpath.basename(path)
    return base.rsplit(".", 1)[1].lower() if "." in base else ""


def list_folder(root: str) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Every file below ``root`` (sorted), and ``(url, reason, severity)`` for what is not listed as
    a file: directory symlinks (not followed: they can loop or list files twice) and broken links.

    On local disks links are looked at; object stores have none."""
    fs, path = io.fs_path(root)
    proto = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    if proto not in ("file", "local"):
        return [f for f in io.walk_files(root) if not io.is_tmp(f)], []
    files: list[str] = []
    skipped: list[tuple[str, str, str]] = []
    for here, dirs, names in os.walk(path, followlinks=False):
        for d in list(dirs):
            full = os.path.join(here, d)
            if os.path.islink(full):
                skipped.append(
                    (
                        full,
                        f"directory symlink {_rel(path, full)!r} → {os.readlink(full)!r} skipped: links "
                        "to folders are not followed (they can loop or list files twice); list its target",
                        SEVERITY_WARNING,
                    )
                )
        for n in names:
            full = os.path.join(here, n)
            if os.path.islink(full) and not os.path.exists(full):
                severity = SEVERITY_ERROR if is_image_extension(_ext(n)) else SEVERITY_WARNING
                skipped.append((full, f"broken symbolic link → {os.readlink(full)!r}; not read", severity))
            elif io.is_tmp(full):
                continue
            elif (what := _not_regular(full)) is not None:
                # opening a named pipe blocks until something writes to it: the job would hang
                severity = SEVERITY_ERROR if is_image_extension(_ext(n)) else SEVERITY_WARNING
                skipped.append((full, f"{what}, not a regular file; not read", severity))
            else:
                files.append(full)
    return sorted(files), sorted(skipped)


def _not_regular(path: str) -> str | None:
    """What a file that is no regular file is (through links), or ``None`` for a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # gone or unreadable: reading it reports why
    if stat.S_ISREG(mode):
        return None
    kinds: tuple[tuple[Callable[[int], bool], str], ...] = (
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
    )
    kinds += ((stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))
    return next((w for test, w in kinds if test(mode)), "a special file")


@dataclass(frozen=True)
class Manifest:
    """A caption manifest of the folder: its file, the column naming files and the caption column."""

    uri: str
    file_column: str
    text_column: str

    def describe(self) -> str:
        return f"{posixpath.basename(self.uri)} ({self.file_column} → {self.text_column})"


def find_manifest(uri: str, text_column: str | None) -> Manifest | str:
    """The manifest ``uri`` is, or why it is none (for the listing of files not read)."""
    from recaption.readers.rows import TableUnreadable, iter_rows, read_schema

    try:
        names, _ = read_schema(uri)
    except (TableUnreadable, OSError, ValueError) as e:
        return f"not read: neither an image, a sidecar nor a caption manifest ({getattr(e, 'reason', e)})"
    file_col = next((c for c in FILE_COLUMNS if c in names), None)
    if file_col is None:
        return (
            "not read: neither an image, a sidecar nor a caption manifest (a manifest has a "
            f"{'/'.join(FILE_COLUMNS[:3])} column; this has {', '.join(names[:8]) or 'none'})"
        )
    if text_column:
        if text_column in names:
            return Manifest(uri, file_col, text_column)
        return (
            f"caption manifest without the --text-column {text_column!r} "
            f"(columns: {', '.join(names)}); not read"
        )
    text = next((c for c in MANIFEST_TEXT if c in names), None)
    if text is None:
        # the only column of strings beside the file names, judged on the first rows
        # (a CSV's numbers are strings too: one that reads as a number is no caption)
        kinds: dict[str, set[str]] = {c: set() for c in names if c != file_col}
        for item in iter_rows(uri, list(kinds), 0, 50):
            if isinstance(item, tuple):
                for c, v in item[1].items():
                    if v is not None:
                        kinds[c].add("text" if isinstance(v, str) and not _is_number(v) else "other")
        strings = [c for c, t in kinds.items() if t == {"text"}]
        if len(strings) != 1:
            return (
                f"caption manifest with {'no' if not strings else 'several'} text column(s) "
                f"({', '.join(strings) or 'none'}); name one with --text-column; not read"
            )
        text = strings[0]
    return Manifest(uri, file_col, text)


@dataclass
class FolderSource(Source):
    """Files under ``root``: images (``has_images``) or, with ``captions_only``, ``.txt`` captions."""

    root: str
    groups: tuple[tuple[str, ...], ...]  # files of each shard (images, or .txt when captions_only)
    captions_only: bool = False
    kind: str = "folder"  # type: ignore[misc]
    # (dropped file, kept file) for files whose key (path without extension) is already taken
    duplicates: tuple[tuple[str, str], ...] = ()
    sidecars: frozenset[str] = frozenset()  # the .txt/.json sidecar files that exist
    manifests: tuple[Manifest, ...] = ()
    # (file, reason, severity) for files that are no sample, sidecar nor manifest: reported by shard 0
    skipped: tuple[tuple[str, str, str], ...] = ()
    read_window: int | None = None  # files read at once (None: fetch.DEFAULT_WINDOW; 1: one by one)
    text_column: str | None = None  # the --text-column given for the manifests (None: found per manifest)
    _captions: Any = field(default=None, init=False, repr=False, compare=False)
    _sidecar_at: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        # both are rebuilt where they are used: the manifests read again, the sidecars indexed
        return {**self.__dict__, "_captions": None, "_sidecar_at": None}

    def _sidecar(self, image: str, ext: str) -> str | None:
        """The image's ``.txt``/``.json`` sidecar, whatever the case of its extension."""
        if self._sidecar_at is None:
            self._sidecar_at = {(_base(f), _ext(f)): f for f in self.sidecars}
        return self._sidecar_at.get((_base(image), ext))

    @property
    def has_images(self) -> bool:  # type: ignore[override]
        return not self.captions_only

    @classmethod
    def scan(
        cls,
        root: str,
        files: list[str],
        shard_size: int,
        captions_only: bool = False,
        kind: str = "folder",
        *,
        text_column: str | None = None,
        skipped: list[tuple[str, str, str]] | None = None,
    ) -> FolderSource:
        """Classify every file: sample, sidecar, manifest, or listed with the reason it is not read."""
        files = [f for f in files if not io.is_tmp(f)]
        rels = {f: _rel(root, f) for f in files}
        if captions_only:
            main = sorted(f for f in files if _ext(f) == "txt")
        else:
            main = sorted(
                f for f in files if is_image_extension(_ext(f)) or unsupported_image_reason(_ext(f))
            )
        first: dict[str, str] = {}
        dups = []
        for f in main:
            k = _stem(rels[f])
            if k in first:
                dups.append((f, first[k]))
            else:
                first[k] = f
        # img2dataset "files" output: shard folders 00000/ each with a sibling 00000.parquet.
        top = {rels[f].split("/", 1)[0] for f in main if "/" in rels[f]}
        shard_dirs = sorted(d for d in top if d.isdigit())
        names = set(rels.values())
        img2dataset = bool(shard_dirs) and all(f"{d}.parquet" in names for d in shard_dirs)
        listed = list(skipped or [])
        sidecars: set[str] = set()
        manifests: list[Manifest] = []
        main_set = set(main)
        for f in files:
            if f in main_set:
                continue
            rel, ext = rels[f], _ext(f)
            if not captions_only and ext in ("txt", "json") and _stem(rel) in first:
                sidecars.add(f)
                continue
            if img2dataset and "/" not in rel and (ext == "parquet" or rel.endswith("_stats.json")):
                continue  # img2dataset's metadata beside each shard folder
            base = posixpath.basename(rel)
            if not captions_only and (base in MANIFEST_NAMES or ext == "json"):
                m = find_manifest(f, text_column)
                if isinstance(m, Manifest):
                    manifests.append(m)
                else:
                    listed.append((f, m, SEVERITY_WARNING))
                continue
            what = (
                "a caption file with no image of the same name beside it"
                if ext == "txt" and not captions_only
                else f"neither an image this Pillow decodes nor a sidecar (.{ext or 'no extension'})"
            )
            listed.append((f, f"{what}; not read", SEVERITY_WARNING))
        common = {
            "captions_only": captions_only,
            "duplicates": tuple(dups),
            "sidecars": frozenset(sidecars),
            "manifests": tuple(manifests),
            "skipped": tuple(sorted(listed)),
            "text_column": text_column,
        }
        if img2dataset:
            by_dir: dict[str, list[str]] = {d: [] for d in shard_dirs}
            for f in main:
                d = rels[f].split("/", 1)[0]
                if d in by_dir:
                    by_dir[d].append(f)
            groups = tuple(tuple(by_dir[d]) for d in shard_dirs)
            return cls(root=root, groups=groups, kind="img2dataset-files", **common)  # type: ignore[arg-type]
        groups = tuple(tuple(main[i : i + shard_size]) for i in range(0, len(main), shard_size))
        return cls(root=root, groups=groups, kind=kind, **common)  # type: ignore[arg-type]

    def describe(self) -> str:
        text = f"{self.kind} source at {self.root}"
        if self.manifests:
            text += "; captions from " + ", ".join(m.describe() for m in self.manifests)
        return text

    def shards(self) -> list[InputShard]:
        return [
            InputShard(index=i, uri=self.root, files=g, kind=self.kind, companions=self._companions(i, g))
            for i, g in enumerate(self.groups)
        ]

    def _companions(self, index: int, group: tuple[str, ...]) -> tuple[str, ...]:
        """The files beside ``group`` that :meth:`read_shard` reads: its images' sidecars and the
        manifests of their folders and the folders above (shard 0, which reports every manifest's
        problems, all of them). From this listing, so a rerun compares listings, not files."""
        if self.captions_only:
            return ()
        out = [
            side
            for f in group
            if not unsupported_image_reason(_ext(f))
            for side in (self._sidecar(f, "txt"), self._sidecar(f, "json"))
            if side is not None
        ]
        folders = {posixpath.dirname(_rel(self.root, f)) for f in group}
        for m in self.manifests:
            d = posixpath.dirname(_rel(self.root, m.uri))
            if index == 0 or any(not d or x == d or x.startswith(d + "/") for x in folders):
                out.append(m.uri)
        return tuple(out)

    def _manifest_captions(self) -> tuple[dict[str, str], list[Failure]]:
        """Captions by file path relative to the root, and the manifests' own problems."""
        if self._captions is None:
            from recaption.readers.rows import BadRow, TableUnreadable, iter_rows

            captions: dict[str, str] = {}
            problems: list[Failure] = []
            images = {_rel(self.root, f) for g in self.groups for f in g}
            for m in self.manifests:
                folder = posixpath.dirname(_rel(self.root, m.uri))
                name = posixpath.basename(m.uri)
                try:
                    for item in iter_rows(m.uri, [m.file_column, m.text_column]):
                        if isinstance(item, BadRow):
                            problems.append(
                                Failure(
                                    key="",
                                    stage=STAGE,
                                    reason=f"{name}, {item.reason}",
                                    uri=m.uri,
                                    member=f"line:{item.line}" if item.line else f"row:{item.row}",
                                )
                            )
                            continue
                        i, row = item
                        file, text = row[m.file_column], row[m.text_column]
                        at = (
                            f"line {i + 1}"
                            if m.uri.lower().endswith((".jsonl", ".ndjson"))
                            else f"record {i + 1}"
                        )
                        if not isinstance(file, str) or not file:
                            problems.append(
                                Failure(
                                    key="",
                                    stage=STAGE,
                                    uri=m.uri,
                                    severity=SEVERITY_WARNING,
                                    member=f"row:{i}",
                                    reason=f"{name}, {at}: {m.file_column} is {file!r}, not a file name; "
                                    "its caption was not used",
                                )
                            )
                            continue
                        if text is None:
                            continue  # no caption for this file: as if it were not listed
                        rel = posixpath.normpath(posixpath.join(folder, file))
                        if rel in captions:
                            # the first caption of a file wins, as for keys; the others are named
                            problems.append(
                                Failure(
                                    key=_stem(rel),
                                    stage=STAGE,
                                    uri=m.uri,
                                    severity=SEVERITY_WARNING,
                                    member=f"row:{i}",
                                    reason=f"{name}, {at}: a second caption for {file!r}; the first was kept",
                                )
                            )
                            continue
                        if rel not in images:
                            problems.append(
                                Failure(
                                    key=_stem(rel),
                                    stage=STAGE,
                                    uri=m.uri,
                                    severity=SEVERITY_WARNING,
                                    reason=f"{name} has a caption for {file!r}, which is not an image "
                                    "of this folder",
                                )
                            )
                            continue
                        captions[rel] = str(text).strip()
                except TableUnreadable as e:
                    problems.append(
                        Failure(key="", stage=STAGE, uri=m.uri, reason=f"{name} cannot be read: {e.reason}")
                    )
            self._captions = (captions, problems)
        return self._captions

    def read_shard(self, shard: InputShard) -> Iterator[Sample | Failure]:
        if shard.index == 0:
            for url, reason, severity in self.skipped:
                yield Failure(
                    key=_stem(_rel(self.root, url)), stage=STAGE, uri=url, reason=reason, severity=severity
                )
            if self.manifests:
                yield from self._manifest_captions()[1]
        dropped = dict(self.duplicates)
        files = [u for u in shard.files if u not in dropped]
        for url in shard.files:
            if url in dropped:
                rel = _rel(self.root, url)
                yield Failure(
                    key=_stem(rel),
                    stage=STAGE,
                    uri=url,
                    reason=f"duplicate key {_stem(rel)!r}: {_rel(self.root, dropped[url])} has the same name "
                    "without extension; this one was dropped",
                )
        if self.captions_only:
            with WindowReader(files, self.read_window) as texts:
                for i, url in enumerate(files):
                    rel = _rel(self.root, url)
                    try:
                        raw = texts.get(i)
                    except FileNotFoundError:
                        yield Failure(key=_stem(rel), stage=STAGE, uri=url, reason=f"file is gone: {url}")
                        continue
                    sample = Sample(key=_stem(rel), source_kind=self.kind, meta={"source_uri": url})
                    caption_from_bytes(sample, raw, f"caption file {rel!r}")
                    yield sample
            return
        captions = self._manifest_captions()[0] if self.manifests else {}
        # one reading order for images and their sidecars: sidecars are read as samples are made,
        # images (lazy) only once a consumer asks for one, each a window ahead of its use
        seq: list[str] = []
        at: dict[str, int] = {}
        lazy: set[int] = set()
        for url in files:
            if unsupported_image_reason(_ext(url)):
                continue
            lazy.add(len(seq))
            at[url] = len(seq)
            seq.append(url)
            for ext in ("txt", "json"):
                side = self._sidecar(url, ext)
                if side is not None:
                    at[side] = len(seq)
                    seq.append(side)
        with WindowReader(seq, self.read_window, frozenset(lazy)) as reader:

            def sidecar(image: str, ext: str) -> bytes | None:
                url = self._sidecar(image, ext)
                if url is None:
                    return None
                try:
                    return reader.get(at[url])
                except OSError:  # gone since the listing: as if it had never been there
                    return None

            for url in files:
                rel = _rel(self.root, url)
                key = _stem(rel)
                unsupported = unsupported_image_reason(_ext(url))
                if unsupported:
                    yield Failure(key=key, stage=STAGE, uri=url, reason=f"{unsupported}; not read")
                    continue
                sample = Sample(
                    key=key,
                    source_kind=self.kind,
                    ref=ImageRef(uri=url),
                    fetch=_image_getter(reader, at[url], url),
                )
                txt_raw = sidecar(url, "txt")
                if txt_raw is not None:
                    caption_from_bytes(sample, txt_raw, f"caption file {key}.txt")
                if sample.caption is None and rel in captions:
                    sample.caption = captions[rel]
                json_raw = sidecar(url, "json")
                if json_raw is not None:
                    meta, warning = parse_json_sidecar(json_raw, f"sidecar {key}.json")
                    if warning:
                        sample.warnings.append(warning)
                    sample.meta = {k: json_safe(v) for k, v in meta.items()}
                    if sample.caption is None and isinstance(meta.get("caption"), str):
                        sample.caption = meta["caption"].strip()
                yield sample


def _image_getter(reader: WindowReader, i: int, url: str) -> Callable[[], bytes]:
    def fetch() -> bytes:
        try:
            return reader.get(i)
        except FileNotFoundError:
            raise RefError(f"image no longer exists: {url}") from None
        except Exception as e:
            raise RefError(f"cannot read image {url}: {type(e).__name__}: {e}") from None

    return fetch


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _base(url: str) -> str:
    return url[: url.rfind(".")]
