"""Input identity: which bytes a finished shard was made from, so a rerun notices changed inputs.

Each finished shard's stats file records the identity of every file of its input shard: path, size
and a version (the object's ETag on an object store, the modification time elsewhere). A rerun
compares them with the files as they are now; a shard whose input changed is redone (its stats
file removed first, so nothing downstream believes the old output meanwhile) and the log names
the file; one whose input vanished is reported and kept. A folder chunk's input also includes
its images' caption sidecars and its folders' caption manifests (:func:`companion_paths`): editing
or removing one redoes the shard. A sidecar added later is not noticed (absent ones are not
recorded, which would double every stats file).

Downstream stages (nouns and encode read caption shards) record the caption shard's identity the
same way, so a redone caption shard makes its nouns and features shards be redone too.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterable
from typing import Any

from recaption import io
from recaption.readers.base import InputShard

log = logging.getLogger("recaption")


def _version(info: dict[str, Any]) -> str:
    for k in ("ETag", "etag", "md5Hash", "generation"):
        if info.get(k):
            return str(info[k]).strip('"')
    for k in ("mtime", "LastModified", "last_modified", "created", "updated"):
        v = info.get(k)
        if v is not None and v != "":
            return str(v.timestamp() if hasattr(v, "timestamp") else v)
    return ""


SIDECAR_EXTS = ("txt", "json")  # photo.jpg's photo.txt caption and photo.json metadata
MANIFEST_NAMES = ("metadata.jsonl", "metadata.csv")  # a folder's caption manifest (HF imagefolder)


def shard_paths(shard: InputShard) -> list[str]:
    """The files an input shard reads: its folder chunk's files, or its one file."""
    return list(shard.files) if shard.files else [shard.uri]


def _parent(p: str) -> str:
    return posixpath.dirname(p.rstrip("/")) if "://" in p else os.path.dirname(p)


def companion_paths(shard: InputShard) -> list[str]:
    """Files beside a folder chunk's images that its rows are also made from: each image's
    ``.txt``/``.json`` sidecar and the caption manifests of its folders (up to the source root).
    A caption edited there must make the shard be redone like an edited image."""
    if not shard.files:
        return []
    out: list[str] = []
    own = set(shard.files)
    root = shard.uri.rstrip("/")
    folders: set[str] = set()
    for f in shard.files:
        base = f.rsplit(".", 1)[0] if "." in f.rsplit("/", 1)[-1] else f
        out += [c for c in (f"{base}.{e}" for e in SIDECAR_EXTS) if c not in own]
        d = _parent(f)
        while d not in folders and d.startswith(root):
            folders.add(d)
            if d == root:
                break
            d = _parent(d)
    out += [io.join(d, n) for d in sorted(folders) for n in MANIFEST_NAMES]
    return out


def _ident(url: str, info: dict[str, Any]) -> dict[str, Any]:
    return {"path": url, "size": int(info.get("size") or 0), "version": _version(info)}


_LISTINGS: dict[str, dict[str, dict[str, Any]]] = {}  # a worker's listings of input folders


def _listing(parent: str, reuse: bool) -> dict[str, dict[str, Any]]:
    if reuse and parent in _LISTINGS:
        return _LISTINGS[parent]
    listed: dict[str, dict[str, Any]] = {}
    try:
        fs, ppath = io._fresh(parent)
        for entry in fs.ls(ppath, detail=True):
            listed[io.to_url(fs, entry["name"])] = entry
    except (FileNotFoundError, NotADirectoryError, OSError):
        listed = {}
    if reuse:
        _LISTINGS.clear()  # one folder at a time: a worker goes through one source
        _LISTINGS[parent] = listed
    return listed


def identities(paths: Iterable[str], *, reuse_listings: bool = False) -> dict[str, dict[str, Any] | None]:
    """The identity of each path (None where it does not exist).

    On local disk one ``stat`` per file; on an object store one listing per folder instead of a
    request per file (``reuse_listings``: the worker's listing of a folder serves all its shards).
    """
    out: dict[str, dict[str, Any] | None] = {}
    by_parent: dict[str, list[str]] = {}
    for p in paths:
        parent = posixpath.dirname(p.rstrip("/")) if "://" in p else os.path.dirname(p)
        by_parent.setdefault(parent, []).append(p)
    for parent, members in by_parent.items():
        listed: dict[str, dict[str, Any]] = {}
        if len(members) > 1 and io.is_object_store(parent):
            listed = _listing(parent, reuse_listings)
        for p in members:
            info = listed.get(p)
            if info is None and listed and p.rsplit(".", 1)[-1] in SIDECAR_EXTS:
                out[p] = None  # an absent sidecar: the listing says so, no request per image
                continue
            if info is None or info.get("type") == "directory":
                try:
                    info = io.info(p)
                except (FileNotFoundError, OSError):
                    out[p] = None
                    continue
            if info.get("type") == "directory":
                out[p] = {"path": p, "size": 0, "version": "directory"}  # a folder source's own uri
            else:
                out[p] = _ident(p, info)
    return out


def shard_identity(shard: InputShard) -> list[dict[str, Any]]:
    """What the worker records in the shard's stats file (missing files are left out)."""
    paths = shard_paths(shard)
    companions = companion_paths(shard)
    companions_set = set(companions)
    ids = identities(paths + companions, reuse_listings=True)
    out: list[dict[str, Any]] = []
    for p in paths + companions:
        ident = ids.get(p)
        if ident is not None:
            # a companion that exists is recorded; its removal later changes the shard's rows
            out.append({**ident, "companion": True} if p in companions_set else ident)
    return out


def changed_shards(
    recorded: dict[int, list[dict[str, Any]]], shards: dict[int, InputShard]
) -> tuple[dict[int, str], dict[int, str]]:
    """Compare recorded identities with the inputs now: ``(changed, vanished)``, each shard index →
    a sentence naming the file. Shards with nothing recorded (older outputs) are not compared."""
    wanted = [p for i, ids in recorded.items() if i in shards for p in (x["path"] for x in ids)]
    now = identities(wanted)
    changed: dict[int, str] = {}
    vanished: dict[int, str] = {}
    for i, ids in sorted(recorded.items()):
        if i not in shards:
            continue
        for old in ids:
            cur = now.get(old["path"])
            if cur is None:
                if old.get("companion"):  # a deleted caption sidecar or manifest: redo the rows
                    changed[i] = f"{old['path']} was removed"
                else:
                    vanished[i] = f"{old['path']} no longer exists"
                break
            if cur["size"] != old["size"] or (cur["version"] and cur["version"] != old["version"]):
                what = (
                    f"size {old['size']} → {cur['size']}"
                    if cur["size"] != old["size"]
                    else f"version {old['version']} → {cur['version']}"
                )
                changed[i] = f"{old['path']} changed ({what})"
                break
    return changed, vanished
