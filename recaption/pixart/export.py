"""Write PixArt's own on-disk layout from feature shards, so unmodified PixArt code trains on it.

What PixArt's loaders read (PixArt-alpha/PixArt-alpha and PixArt-alpha/PixArt-sigma,
``diffusion/data/datasets/InternalData.py`` and ``InternalData_ms.py``):

- ``data_info.json``: a list of ``{path, prompt, height, width, ratio}`` (``ratio`` = height/width;
  items with ``ratio > 4`` are dropped by the loaders). PixArt-Σ adds ``sharegpt4v``, an
  alternative caption. The loaders look for it in different places: α ``InternalData`` and Σ
  ``InternalData`` in ``root/partition/``, α ``InternalDataMS`` in ``root/partition_filter/`` (newer
  α commits) or ``root/partition/`` (older ones), Σ ``InternalDataMS``/``InternalDataMSSigma`` in
  ``root/`` itself. We write the same file to all three places;
- T5 features: ``root/caption_feature_wmask/NAME.npz`` with ``caption_feature`` (1, L, hidden)
  float32 and ``attention_mask`` (1, L) int64, as PixArt's ``tools/extract_features.py`` saves them
  (``T5Embedder`` output ``.float()``, the tokenizer's int64 mask). α's ``InternalDataMS`` does not
  pad stored features to the training length (its ``InternalData`` does), so by default we write
  them padded to ``max_length`` the way ``InternalData`` pads: the last real token repeated, mask 0;
- VAE features: ``(2C, H/8, W/8)`` float32 ``.npy`` (mean then std; the loader does
  ``mean, std = torch.from_numpy(np.load(path)).chunk(2)``) in
  ``root/img_vae_fatures_{R}_multiscale/ms/NAME.npy`` for multi-scale training (the misspelling is
  in their code) and ``root/img_vae_features_{R}resolution/noflip/NAME.npy`` for single-scale
  (square) features;
- ``layouts=("internal", "sigma")`` also writes what PixArt-Σ's ``InternalDataMSSigma`` reads:
  ``caption_features_new/``, ``sharegpt4v_caption_features_new/`` (the alternative caption) and
  ``img_sdxl_vae_features_{R}resolution_ms_new/``.

The file name rule: every loader derives ``NAME`` from ``item['path']``; α's rule is
``'_'.join(path.rsplit('/', 1)).replace('.png', EXT)`` (only the *last* ``/`` and only ``.png``), Σ's
also replaces ``.jpg``/``.webp``/``.jpeg``, and ``InternalDataSigma`` keeps only the base name. So our
``path`` is ``KEY.png`` with every ``/`` of the key made ``_``: flat, ending in ``.png``, and every one
of those rules then gives the same ``NAME`` = ``KEY.npz``/``KEY.npy`` (:func:`loader_name`); an
extension inside a key (``cat.jpg``) is written ``cat_jpg``, since Σ's rule would replace it too. The
``.png`` is nominal: images are not exported (training reads latents; ``load_vae_feat=True``). Keys
that collide after these changes are refused.
"""

from __future__ import annotations

import io as _io
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recaption import io
from recaption.encoder import schema as S
from recaption.errors import ConfigError
from recaption.pixart.features import FeatureSet, open_parquet

LAYOUTS = ("internal", "sigma")
DATA_INFO = "data_info.json"
# Where the loaders look for the JSON (see the module docstring).
DATA_INFO_FOLDERS = ("", "partition", "partition_filter")
T5_FOLDER = "caption_feature_wmask"
SIGMA_T5_FOLDER = "caption_features_new"
SIGMA_ALT_T5_FOLDER = "sharegpt4v_caption_features_new"


# Σ's loaders replace these anywhere in the path, not only at its end
_LOADER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def image_path(key: str) -> str:
    """The ``path`` we give an image in ``data_info.json``: flat, ``.png`` (see the module docstring).

    An extension inside the key (``photos/cat.jpg``) becomes ``_jpg``: Σ's rule replaces ``.jpg``
    wherever it occurs, so ``photos_cat.jpg.png`` would be looked for as ``photos_cat.npz.npz``.
    """
    flat = key.replace("/", "_")
    for ext in _LOADER_EXTENSIONS:
        flat = flat.replace(ext, "_" + ext[1:])
    return flat + ".png"


def loader_name(path: str, ext: str) -> str:
    """PixArt-α's rule (``InternalData``/``InternalDataMS``): the feature file name of ``path``."""
    return "_".join(path.rsplit("/", 1)).replace(".png", ext)


def ms_vae_folder(resolution: int) -> str:
    return f"img_vae_fatures_{resolution}_multiscale/ms"


def noflip_vae_folder(resolution: int) -> str:
    return f"img_vae_features_{resolution}resolution/noflip"


def sigma_vae_folder(resolution: int) -> str:
    return f"img_sdxl_vae_features_{resolution}resolution_ms_new"


@dataclass
class ExportSummary:
    """What :func:`export_pixart` wrote."""

    dest: str
    rows: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    files: dict[str, int] = field(default_factory=dict)  # folder -> files written
    data_info: list[str] = field(default_factory=list)
    config_hint: dict[str, Any] = field(default_factory=dict)


def _npz_bytes(arrays: dict[str, np.ndarray], compress: bool) -> bytes:
    buf = _io.BytesIO()
    if compress:
        np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    else:
        np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = _io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def pad_features(feats: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(L, hidden)`` features and ``(L,)`` mask padded or cut to ``max_length`` as PixArt pads."""
    n = min(feats.shape[0], max_length)
    out = np.empty((max_length, feats.shape[1]), dtype=np.float32)
    if n:
        out[:n] = feats[:n]
        out[n:] = feats[n - 1]
    else:
        out[:] = 0.0
    mask = np.zeros(max_length, dtype=np.int64)
    mask[:n] = 1
    return out, mask


def export_pixart(
    features_url: str | Sequence[str],
    dest_url: str,
    *,
    caption_field: str | None = None,
    alt_caption_field: str | None = None,
    resolutions: Sequence[int] | None = None,
    layouts: Sequence[str] = ("internal",),
    pad_to_max_length: bool = True,
    compress: bool = False,
    max_ratio: float | None = None,
    overwrite: bool = False,
    workers: int = 8,
) -> ExportSummary:
    """Write PixArt's layout under ``dest_url`` from the feature shards at ``features_url``.

    ``caption_field``: the caption whose T5 features and text become ``prompt`` (default: the
    first encoded); ``alt_caption_field``: PixArt-Σ's ``sharegpt4v`` caption (text, and features in
    the ``sigma`` layout). ``resolutions``: which latents (default: all every file has).
    ``pad_to_max_length``: store features at the training length (needed by α's InternalDataMS).
    ``compress``: ``np.savez_compressed`` as PixArt's extractor (slower; same arrays).
    ``max_ratio``: entries with a larger height/width are left out, as PixArt's loaders drop them
    (default: the rule the features were encoded with, 4 for α and 4.5 for Σ).
    Files mixing presets are refused (:class:`~recaption.encoder.schema.MixedFeaturesError`).
    """
    for layout in layouts:
        if layout not in LAYOUTS:
            raise ConfigError("layout", layout, LAYOUTS)
    fs = FeatureSet.open(features_url)
    meta = fs.metadata
    field_ = fs.require_text(caption_field)
    alt = fs.require_text(alt_caption_field) if alt_caption_field else None
    if meta.image is None:
        raise ConfigError("features", features_url, "feature shards with VAE latents (vae_* columns)")
    res_list = [fs.require_resolution(r) for r in resolutions] if resolutions else None
    if res_list is None:
        res_list = sorted(
            set.intersection(*(set(m.image.resolutions) for m in fs.per_file.values() if m.image))
        )
    assert meta.text is not None
    info_urls = [
        io.join(dest_url, d, DATA_INFO) if d else io.join(dest_url, DATA_INFO) for d in DATA_INFO_FOLDERS
    ]
    if not overwrite and any(io.exists(u) for u in info_urls):
        raise ConfigError("dest", dest_url, "a folder without a data_info.json, or overwrite=True")

    if max_ratio is None:
        max_ratio = meta.image.max_ratio
    max_length = meta.text.max_length
    hidden = meta.text.hidden_size
    c2 = 2 * meta.image.latent_channels
    multiscale = meta.image.multiscale
    folders: dict[str, str] = {}
    if "internal" in layouts:
        folders["t5"] = T5_FOLDER
        for r in res_list:
            folders[f"vae{r}"] = ms_vae_folder(r) if multiscale else noflip_vae_folder(r)
    if "sigma" in layouts:
        folders["sigma_t5"] = SIGMA_T5_FOLDER
        if alt:
            folders["sigma_alt_t5"] = SIGMA_ALT_T5_FOLDER
        for r in res_list:
            folders[f"sigma_vae{r}"] = sigma_vae_folder(r)
    for folder in folders.values():
        io.makedirs(io.join(dest_url, folder))

    summary = ExportSummary(dest=dest_url)
    summary.files = dict.fromkeys(folders.values(), 0)
    entries: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    text_cols = [S.t5_column(field_, s) for s in ("", "_len", "_text")]
    alt_cols = [S.t5_column(alt, s) for s in ("", "_len", "_text")] if alt else []
    vae_cols = [S.vae_column(r, s) for r in res_list for s in ("", "_h", "_w")]
    columns = ["key", "width", "height", *text_cols, *alt_cols, *vae_cols]

    def write(url: str, data: bytes) -> None:
        # under a temporary name: a killed export leaves no truncated array for training to trip on
        io.write_bytes_atomic(url, data)

    def t5_npz(blob: bytes, n: int) -> bytes:
        feats = S.unpack_tensor(blob, (n, hidden), meta.text.dtype).astype(np.float32)  # type: ignore[union-attr]
        if pad_to_max_length:
            feats, mask = pad_features(feats, max_length)
        else:
            mask = np.ones(feats.shape[0], dtype=np.int64)
        return _npz_bytes({"caption_feature": feats[None], "attention_mask": mask[None]}, compress)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: list[Any] = []
        for url in fs.files:
            pf = open_parquet(url)
            for g in range(pf.num_row_groups):
                rows = pf.read_row_group(g, columns=columns).to_pylist()
                for row in rows:
                    key = row["key"]
                    h, w = int(row["height"]), int(row["width"])
                    if h / w > max_ratio:
                        summary.skipped.append((key, f"ratio {h / w:.3f} > {max_ratio:g} (PixArt drops it)"))
                        continue
                    missing = [
                        c for c in (text_cols[0], *[S.vae_column(r) for r in res_list]) if row[c] is None
                    ]
                    if missing:
                        summary.skipped.append((key, f"no {', '.join(missing)} (not encoded)"))
                        continue
                    path = image_path(key)
                    if path in seen:
                        raise ConfigError(
                            "keys",
                            key,
                            "keys that stay distinct with '/' made '_'",
                            hint=f"{seen[path]!r} too",
                        )
                    seen[path] = key
                    entry = {
                        "path": path,
                        "prompt": row[text_cols[2]],
                        "height": h,
                        "width": w,
                        "ratio": h / w,
                        "key": key,
                    }
                    if alt:
                        entry["sharegpt4v"] = row[alt_cols[2]] or ""
                    entries.append(entry)
                    npz = t5_npz(row[text_cols[0]], row[text_cols[1]])
                    targets = [(folders[k], npz) for k in ("t5", "sigma_t5") if k in folders]
                    if alt and "sigma_alt_t5" in folders and row[alt_cols[0]] is not None:
                        targets.append((folders["sigma_alt_t5"], t5_npz(row[alt_cols[0]], row[alt_cols[1]])))
                    for folder, data in targets:
                        pending.append(
                            pool.submit(write, io.join(dest_url, folder, loader_name(path, ".npz")), data)
                        )
                        summary.files[folder] += 1
                    for r in res_list:
                        rh, rw = row[S.vae_column(r, "_h")], row[S.vae_column(r, "_w")]
                        lat = S.unpack_tensor(row[S.vae_column(r)], (c2, rh // 8, rw // 8), meta.image.dtype)
                        npy = _npy_bytes(np.ascontiguousarray(lat, dtype=np.float32))
                        for k in (f"vae{r}", f"sigma_vae{r}"):
                            if k in folders:
                                target = io.join(dest_url, folders[k], loader_name(path, ".npy"))
                                pending.append(pool.submit(write, target, npy))
                                summary.files[folders[k]] += 1
                    summary.rows += 1
                if len(pending) > 4 * max(1, workers) * 8:
                    for fut in pending:
                        fut.result()
                    pending = []
        for fut in pending:
            fut.result()

    text = json.dumps(entries, ensure_ascii=False)
    for u in info_urls:  # written last: a folder with data_info.json is complete
        io.write_text_atomic(u, text)
    summary.data_info = info_urls
    summary.config_hint = {
        "data": {
            "type": "InternalDataMS" if multiscale else "InternalData",
            "root": dest_url,
            "image_list_json": [DATA_INFO],
            "load_vae_feat": True,
        },
        "model_max_length": max_length,
        "scale_factor": meta.image.scale_factor,
        "multi_scale": multiscale,
        "aspect_ratio_type": f"ASPECT_RATIO_{max(res_list)}" if multiscale else None,
        "image_size": max(res_list),
    }
    return summary
