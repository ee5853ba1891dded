"""Write PixArt's own on-disk layout from feature shards, so unmodified PixArt code trains on it.

What PixArt's loaders read (PixArt-alpha/PixArt-alpha and PixArt-alpha/PixArt-sigma,
``diffusion/data/datasets/InternalData.py`` and ``InternalData_ms.py``):

- ``data_info.json``: a list of ``{path, prompt, height, width, ratio}`` (``ratio`` = height/width;
  items with ``ratio > 4`` are dropped by the loaders). PixArt-Σ adds ``sharegpt4v``, an
  alternative caption. The loaders look for it in different places: α ``InternalData`` and Σ
  ``InternalData`` in ``root/partition/``, α ``InternalDataMS`` in ``root/partition_filter/`` (newer
  α commits) or ``root/partition/`` (older ones), Σ ``InternalDataMS``/``InternalDataMSSigma`` in
  ``root/`` itself. We write the same file to all three places;
- T5 features: ``root/caption_feature_wmask/NAME.npz`` (and ``root/caption_features``, a symlink to
  it, where PixArt-Σ's own ``InternalDataMS``, which Σ's checkout trains α's multi-scale configs
  with, reads them) with ``caption_feature`` (1, L, hidden)
  float32 and ``attention_mask`` (1, L) int64, as PixArt-α's ``tools/extract_features.py`` saves them
  (``T5Embedder`` output ``.float()``, the tokenizer's int64 mask). α's ``InternalDataMS`` does not
  pad stored features to the training length (its ``InternalData`` does), so by default we write
  them padded to ``max_length`` the way ``InternalData`` pads: the last real token repeated, mask 0.
  The Σ folders hold float16 features with an int16 mask, as PixArt-Σ's extractor saves them
  (``caption_emb.to(torch.float16)``, ``attention_mask.to(torch.int16)``), by default only the real
  tokens: ``InternalDataSigma`` and ``InternalDataMSSigma`` both pad (and cast to float16);
- VAE features: ``(2C, H/8, W/8)`` float32 ``.npy`` (mean then std; the loader does
  ``mean, std = torch.from_numpy(np.load(path)).chunk(2)``) in
  ``root/img_vae_fatures_{R}_multiscale/ms/NAME.npy`` for multi-scale training (the misspelling is
  in their code) and ``root/img_vae_features_{R}resolution/noflip/NAME.npy`` for single-scale
  (square) features;
- ``layouts=("internal", "sigma")`` also writes what PixArt-Σ's ``InternalDataMSSigma`` reads:
  ``caption_features_new/``, ``sharegpt4v_caption_features_new/`` (the alternative caption) and
  ``img_sdxl_vae_features_{R}resolution_ms_new/``, and ``InternalDataSigma``'s square latents in
  ``img_sdxl_vae_features_{R}resolution_new/`` (no ``noflip``), float16 as Σ's extractor stores them;
- square latents (``noflip`` and ``..._new``) come from the ``vae_R_square`` columns of
  ``recaption encode --square``, or from the main columns of single-scale features;
- images (``images=True``): ``root.replace('InternData', 'InternImgs')/PATH``, every loader's rule
  (:mod:`recaption.pixart.images`).

The file name rule: every loader derives ``NAME`` from ``item['path']``; α's rule is
``'_'.join(path.rsplit('/', 1)).replace('.png', EXT)`` (only the *last* ``/`` and only ``.png``), Σ's
also replaces ``.jpg``/``.webp``/``.jpeg``, and ``InternalDataSigma`` keeps only the base name. So our
``path`` is ``KEY.png`` with every ``/`` of the key made ``_``: flat, ending in ``.png``, and every one
of those rules then gives the same ``NAME`` = ``KEY.npz``/``KEY.npy`` (:func:`loader_name`); an
extension inside a key (``cat.jpg``, ``IMG.JPG``) is written ``cat_jpg``, since Σ's rules would
replace it too. A key longer than a file name may be keeps its first 183 bytes and a hash of the
whole key (the ``key`` field of each entry keeps the key itself). The
``.png`` is the name of the exported image (``images=True``; a linked JPEG keeps its bytes, PIL
opens it by content). Keys that collide after these changes are refused.
"""

from __future__ import annotations

import hashlib
import io as _io
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np

from recaption import io
from recaption.encoder import schema as S
from recaption.errors import ConfigError
from recaption.images.decode import DEFAULT_MAX_PIXELS, DecodeError
from recaption.pixart.features import FeatureSet, open_parquet
from recaption.readers.base import REF_COLUMNS

LAYOUTS = ("internal", "sigma")
DATA_INFO = "data_info.json"
# Where the loaders look for the JSON (see the module docstring).
DATA_INFO_FOLDERS = ("", "partition", "partition_filter")
T5_FOLDER = "caption_feature_wmask"
# PixArt-Σ's checkout trains α's multi-scale configs with its own InternalDataMS, which reads the
# same (unpadded-by-the-loader) features from here: a link to T5_FOLDER
SIGMA_CHECKOUT_T5_FOLDER = "caption_features"
SIGMA_T5_FOLDER = "caption_features_new"
SIGMA_ALT_T5_FOLDER = "sharegpt4v_caption_features_new"
# The training configs PixArt ships (α: configs/pixart_config, Σ: configs/pixart_sigma_config);
# a hint for another resolution names the config it follows with that image_size.
SHIPPED_CONFIGS = (
    "PixArt_xl2_img256_internal.py",
    "PixArt_xl2_img512_internal.py",
    "PixArt_xl2_img1024_internal.py",
    "PixArt_xl2_img512_internalms.py",
    "PixArt_xl2_img1024_internalms.py",
    "PixArt_sigma_xl2_img256_internal.py",
    "PixArt_sigma_xl2_img512_internalms.py",
    "PixArt_sigma_xl2_img1024_internalms.py",
    "PixArt_sigma_xl2_img2K_internalms_kvcompress.py",
)
# PixArt-Σ's shipped configs train on the alternate (sharegpt4v) caption half the time.
SIGMA_REAL_PROMPT_RATIO = 0.5


# The longest stem of a file name we write (255 bytes less the extension and write_bytes_atomic's
# ".NAME.tmp-<12 hex>" temporary name)
_MAX_STEM_BYTES = 200

# Σ's loaders replace these anywhere in the path, not only at its end (Σ's ``InternalData``, which
# its α configs train with, also the upper-case ``.JPEG`` and ``.JPG``)
_LOADER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".JPEG", ".JPG")


def image_path(key: str) -> str:
    """The ``path`` we give an image in ``data_info.json``: flat, ``.png`` (see the module docstring).

    An extension inside the key (``photos/cat.jpg``) becomes ``_jpg``: Σ's rule replaces ``.jpg``
    wherever it occurs, so ``photos_cat.jpg.png`` would be looked for as ``photos_cat.npz.npz``.
    """
    flat = key.replace("/", "_")
    for ext in _LOADER_EXTENSIONS:
        flat = flat.replace(ext, "_" + ext[1:])
    if len(flat.encode()) > _MAX_STEM_BYTES:
        # a file name has at most 255 bytes (with the temporary name's prefix and suffix added while
        # it is written): a long key keeps its start and a hash of the whole key
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        head = flat.encode()[: _MAX_STEM_BYTES - len(digest) - 1].decode(errors="ignore")
        flat = f"{head}_{digest}"
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


def sigma_square_vae_folder(resolution: int) -> str:
    """``InternalDataSigma``'s single-scale latents (and Σ's extractor without ``--multi_scale``)."""
    return f"img_sdxl_vae_features_{resolution}resolution_new"


@dataclass
class ExportSummary:
    """What :func:`export_pixart` wrote."""

    dest: str
    rows: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    files: dict[str, int] = field(default_factory=dict)  # folder -> files written
    data_info: list[str] = field(default_factory=list)
    # one PixArt config per way to train on what was written (see config_hints); config_hint is
    # the first of them
    config_hint: dict[str, Any] = field(default_factory=dict)
    config_hints: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)  # "written"/"linked"/"symlinked" -> count
    images_root: str | None = None
    warnings: list[str] = field(default_factory=list)  # one line each, for the person exporting


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


def pad_features(
    feats: np.ndarray, max_length: int, dtype: Any = np.float32, mask_dtype: Any = np.int64
) -> tuple[np.ndarray, np.ndarray]:
    """``(L, hidden)`` features and ``(L,)`` mask padded or cut to ``max_length`` as PixArt pads
    (``InternalData.getdata``: the last real token repeated, mask 0)."""
    n = min(feats.shape[0], max_length)
    out = np.empty((max_length, feats.shape[1]), dtype=dtype)
    if n:
        out[:n] = feats[:n]
        out[n:] = feats[n - 1]
    else:
        out[:] = 0.0
    mask = np.zeros(max_length, dtype=mask_dtype)
    mask[:n] = 1
    return out, mask


@dataclass(frozen=True)
class TextFormat:
    """How one layout stores T5 features: PixArt-α's extractor saves float32 features with the
    tokenizer's int64 mask; PixArt-Σ's saves ``caption_emb.to(torch.float16)`` with
    ``attention_mask.to(torch.int16)`` (``tools/extract_features.py``)."""

    dtype: Any
    mask_dtype: Any
    pad: bool

    def npz(self, feats: np.ndarray, max_length: int, compress: bool) -> bytes:
        if self.pad:
            out, mask = pad_features(feats, max_length, self.dtype, self.mask_dtype)
        else:
            n = min(feats.shape[0], max_length)
            out = np.ascontiguousarray(feats[:n], dtype=self.dtype)
            mask = np.ones(n, dtype=self.mask_dtype)
        if not np.isfinite(out).all():
            raise ValueError(f"T5 features overflow {np.dtype(self.dtype).name} (values beyond its range)")
        return _npz_bytes({"caption_feature": out[None], "attention_mask": mask[None]}, compress)


def _link_t5_folder(dest_url: str) -> str | None:
    """``caption_features`` → ``caption_feature_wmask`` (a relative symlink): what PixArt-Σ's own
    ``InternalDataMS`` reads when training α's multi-scale configs from Σ's checkout. Returns a
    warning where no link can be made (an object store, a filesystem without symlinks)."""
    import os

    why = "the destination is not a local folder"
    if io.protocol_of(dest_url) in ("file", "local"):
        link = os.path.join(dest_url, SIGMA_CHECKOUT_T5_FOLDER)
        if os.path.islink(link) and os.readlink(link) == T5_FOLDER:
            return None
        try:
            if os.path.islink(link):
                os.unlink(link)
            os.symlink(T5_FOLDER, link)
            return None
        except OSError as e:
            why = e.strerror or str(e)
    return (
        f"{SIGMA_CHECKOUT_T5_FOLDER}/ not linked to {T5_FOLDER}/ ({why}): PixArt-Σ's checkout trains "
        f"α's multi-scale configs with an InternalDataMS that reads {SIGMA_CHECKOUT_T5_FOLDER}/; "
        f"copy {T5_FOLDER}/ there to use it"
    )


class _HintCommon(TypedDict):
    """The :func:`_hint` keywords every hint of one export shares."""

    max_length: int
    scale_factor: float


def _hint(
    name: str,
    dataset: str,
    dest: str,
    resolution: int,
    *,
    multiscale: bool,
    max_length: int,
    scale_factor: float,
    load_vae_feat: bool,
    sigma: bool,
    real_prompt_ratio: float | None = None,
) -> dict[str, Any]:
    """The settings a PixArt config needs to train on an export (the README's table)."""
    data: dict[str, Any] = {
        "type": dataset,
        "root": dest,
        "image_list_json": [DATA_INFO],
        "load_vae_feat": load_vae_feat,
    }
    if sigma:
        data["load_t5_feat"] = True
    hint: dict[str, Any] = {
        "pixart_config": name,
        "shipped": name in SHIPPED_CONFIGS,
        "data": data,
        "image_size": resolution,
        "multi_scale": multiscale,
        "aspect_ratio_type": f"ASPECT_RATIO_{resolution}" if multiscale else None,
        "model_max_length": max_length,
        "scale_factor": scale_factor,
    }
    if sigma:
        hint["real_prompt_ratio"] = real_prompt_ratio
    return hint


def export_pixart(
    features_url: str | Sequence[str],
    dest_url: str,
    *,
    caption_field: str | None = None,
    alt_caption_field: str | None = None,
    resolutions: Sequence[int] | None = None,
    layouts: Sequence[str] = ("internal",),
    pad_to_max_length: bool | None = None,
    compress: bool = False,
    images: bool = False,
    link_images: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_ratio: float | None = None,
    overwrite: bool = False,
    workers: int = 8,
) -> ExportSummary:
    """Write PixArt's layout under ``dest_url`` from the feature shards at ``features_url``.

    ``caption_field``: the caption whose T5 features and text become ``prompt`` (default: the
    first encoded); ``alt_caption_field``: PixArt-Σ's ``sharegpt4v`` caption (text, and features in
    the ``sigma`` layout). ``resolutions``: which latents (default: all every file has).
    ``pad_to_max_length``: store T5 features at the training length; ``None`` (default): where a
    loader needs it, i.e. α's ``caption_feature_wmask`` (α's ``InternalDataMS`` does not pad) and
    not Σ's folders (both Σ loaders pad, so only the real tokens are stored).
    ``compress``: ``np.savez_compressed`` as PixArt's extractors (slower; same arrays).
    ``images``: also each sample's image where the loaders read it with ``load_vae_feat=False``
    (:mod:`recaption.pixart.images`; ``link_images``: hard/symbolic links where that gives the
    same pixels; ``max_pixels``: the pixel cap the encode stage used). Square (single-scale)
    latents are written where the features have them (``recaption encode --square``, or
    single-scale features).
    ``max_ratio``: entries with a larger height/width are left out, as PixArt's loaders drop them
    (default: the rule the features were encoded with, 4 for α and 4.5 for Σ).
    Files mixing presets are refused (:class:`~recaption.encoder.schema.MixedFeaturesError`).
    ``dest_url``'s lease (:mod:`recaption.shards.lease`) is held while writing, as a run holds its
    output: a second export, or a run, into the same folder is refused at once.
    """
    from recaption.pixart.images import export_image, images_root
    from recaption.readers.base import ImageRef
    from recaption.readers.refs import ImageOpener, RefError
    from recaption.shards.lease import hold

    for layout in layouts:
        if layout not in LAYOUTS:
            raise ConfigError("layout", layout, LAYOUTS)
    # PixArt joins a relative ``root`` onto the config's ``data_root`` and replaces 'InternData' in
    # the whole root to find the images: the hints and the images need the absolute path
    dest_url = io.normalize(dest_url)
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

    # One writer per folder, as for runs: a second export (or a run) into DEST is refused at once.
    with hold(dest_url, command="export-pixart") as (lease,):
        if max_ratio is None:
            max_ratio = meta.image.max_ratio
        max_length = meta.text.max_length
        hidden = meta.text.hidden_size
        c2 = 2 * meta.image.latent_channels
        multiscale = meta.image.multiscale
        # square latents: the main columns of single-scale features, or the vae_R_square columns
        square_cols = multiscale and all(m.image is not None and m.image.square for m in fs.per_file.values())
        has_square = not multiscale or square_cols
        sigma = "sigma" in layouts
        formats = {
            "t5": TextFormat(np.float32, np.int64, True if pad_to_max_length is None else pad_to_max_length),
            "sigma": TextFormat(np.float16, np.int16, bool(pad_to_max_length)),
        }
        # Σ's extractor stores its latents as float16 (fp16 VAE / autocast): exact from float16 features
        sigma_vae_dtype = np.float16 if meta.image.dtype == "float16" else np.float32
        # (folder, source) for each latent resolution: source "ms" = the vae_R columns of multi-scale
        # features, "square" = the square latents (the vae_R columns of single-scale features, or
        # the vae_R_square columns)
        vae_targets: dict[int, list[tuple[str, str, Any]]] = {r: [] for r in res_list}
        folders: list[str] = []
        t5_folders: list[tuple[str, str]] = []  # (folder, format)
        if "internal" in layouts:
            t5_folders.append((T5_FOLDER, "t5"))
            for r in res_list:
                if multiscale:
                    vae_targets[r].append((ms_vae_folder(r), "ms", np.float32))
                if has_square:
                    vae_targets[r].append((noflip_vae_folder(r), "square", np.float32))
        if sigma:
            t5_folders.append((SIGMA_T5_FOLDER, "sigma"))
            for r in res_list:
                if multiscale:
                    vae_targets[r].append((sigma_vae_folder(r), "ms", sigma_vae_dtype))
                if has_square:
                    vae_targets[r].append((sigma_square_vae_folder(r), "square", sigma_vae_dtype))
        folders += [f for f, _ in t5_folders]
        if alt and sigma:
            folders.append(SIGMA_ALT_T5_FOLDER)
        folders += [f for r in res_list for f, _, _ in vae_targets[r]]
        for folder in folders:
            io.makedirs(io.join(dest_url, folder))
        link_warning = _link_t5_folder(dest_url) if "internal" in layouts and multiscale else None

        summary = ExportSummary(dest=dest_url)
        summary.files = dict.fromkeys(folders, 0)
        img_root = images_root(dest_url) if images else None
        summary.images_root = img_root
        if img_root is not None:
            io.makedirs(img_root)
        entries: list[dict[str, Any]] = []
        seen: dict[str, str] = {}
        text_cols = [S.t5_column(field_, s) for s in ("", "_len", "_text")]
        alt_cols = [S.t5_column(alt, s) for s in ("", "_len", "_text")] if alt else []
        vae_cols = [S.vae_column(r, s) for r in res_list for s in ("", "_h", "_w")]
        if square_cols:
            vae_cols += [S.square_column(r) for r in res_list]
        columns = ["key", "width", "height", *REF_COLUMNS, *text_cols, *alt_cols, *vae_cols]

        def write(url: str, data: bytes) -> None:
            # under a temporary name: a killed export leaves no truncated array for training to trip on
            io.write_bytes_atomic(url, data)

        def export_row(
            row: dict[str, Any], path: str, image: tuple[Any, bytes] | None
        ) -> tuple[list[str], str]:
            """Everything of one sample; the image first, so a sample whose image fails has no files.
            Returns the folders written to and how the image was exported."""
            how = ""
            if image is not None and img_root is not None:
                ref, data = image
                how = export_image(
                    ref,
                    data,
                    io.join(img_root, path),
                    size=(int(row["width"]), int(row["height"])),
                    link=link_images,
                    max_pixels=max_pixels,
                ).how
            t5 = S.unpack_tensor(row[text_cols[0]], (row[text_cols[1]], hidden), meta.text.dtype)  # type: ignore[union-attr]
            out: list[tuple[str, str, bytes]] = []  # (folder, file name, bytes)
            npz_name, npy_name = loader_name(path, ".npz"), loader_name(path, ".npy")
            for folder, fmt in t5_folders:
                out.append((folder, npz_name, formats[fmt].npz(t5, max_length, compress)))
            if alt and sigma and row[alt_cols[0]] is not None:
                alt_t5 = S.unpack_tensor(row[alt_cols[0]], (row[alt_cols[1]], hidden), meta.text.dtype)  # type: ignore[union-attr]
                out.append(
                    (SIGMA_ALT_T5_FOLDER, npz_name, formats["sigma"].npz(alt_t5, max_length, compress))
                )
            for r in res_list:
                for folder, source, dtype in vae_targets[r]:
                    if source == "ms" or not multiscale:
                        rh, rw = row[S.vae_column(r, "_h")], row[S.vae_column(r, "_w")]
                        blob = row[S.vae_column(r)]
                    else:
                        rh = rw = r
                        blob = row[S.square_column(r)]
                    lat = S.unpack_tensor(blob, (c2, rh // 8, rw // 8), meta.image.dtype)  # type: ignore[union-attr]
                    out.append((folder, npy_name, _npy_bytes(np.ascontiguousarray(lat, dtype=dtype))))
            for folder, name, data in out:
                write(io.join(dest_url, folder, name), data)
            return [folder for folder, _, _ in out], how

        opener = ImageOpener()
        pending: list[tuple[dict[str, Any], Any]] = []

        def settle() -> None:
            lease.check()  # no I/O: stops soon after the heartbeat finds the lease taken over
            for entry, fut in pending:
                try:
                    written, how = fut.result()
                except DecodeError as e:
                    summary.skipped.append((entry["key"], f"image: {e.reason}"))
                    del seen[entry["path"]]
                    continue
                except ValueError as e:  # an image that changed since, T5 values beyond float16
                    summary.skipped.append((entry["key"], str(e)))
                    del seen[entry["path"]]
                    continue
                entries.append(entry)
                for folder in written:
                    summary.files[folder] += 1
                if how:
                    summary.images[how] = summary.images.get(how, 0) + 1
                summary.rows += 1
            pending.clear()

        try:
            with ThreadPoolExecutor(max(1, workers)) as pool:
                for url in fs.files:
                    pf = open_parquet(url)
                    names = set(pf.schema_arrow.names)
                    cols = [c for c in columns if c in names or c not in REF_COLUMNS]
                    for g in range(pf.num_row_groups):
                        rows = pf.read_row_group(g, columns=cols).to_pylist()
                        for row in rows:
                            key = row["key"]
                            h, w = int(row["height"]), int(row["width"])
                            if h / w > max_ratio:
                                summary.skipped.append(
                                    (key, f"ratio {h / w:.3f} > {max_ratio:g} (PixArt drops it)")
                                )
                                continue
                            need = [text_cols[0], *[S.vae_column(r) for r in res_list]]
                            if square_cols:
                                need += [S.square_column(r) for r in res_list]
                            missing = [c for c in need if row[c] is None]
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
                            image: tuple[Any, bytes] | None = None
                            if img_root is not None:
                                ref = ImageRef.from_columns(row)
                                if ref is None:
                                    summary.skipped.append(
                                        (key, "image: the features have no image reference")
                                    )
                                    continue
                                try:
                                    image = (ref, opener.read(ref))
                                except RefError as e:
                                    summary.skipped.append((key, f"image: {e.reason}"))
                                    continue
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
                            pending.append((entry, pool.submit(export_row, row, path, image)))
                        if len(pending) > 4 * max(1, workers) * 8:
                            settle()
                settle()
        finally:
            opener.close()

        real_prompt_ratio = SIGMA_REAL_PROMPT_RATIO if alt else 1.0
        if alt and sigma and entries:
            empty = sum(1 for e in entries if not e["sharegpt4v"])
            if empty == len(entries):
                real_prompt_ratio = 1.0
                summary.warnings.append(
                    f"the alternate caption '{alt}' is empty for every sample: PixArt-Σ's shipped "
                    "real_prompt_ratio=0.5 fails building the dataset (it asserts the first 'sharegpt4v' "
                    "is not empty); train with real_prompt_ratio=1.0, as the config hints say"
                )
            elif empty:
                # Σ's loaders assert on the first entry's alternate caption alone: put one that has it first
                first = next(i for i, e in enumerate(entries) if e["sharegpt4v"])
                entries.insert(0, entries.pop(first))
                summary.warnings.append(
                    f"the alternate caption '{alt}' is empty for {empty} of {len(entries)} samples: with "
                    "real_prompt_ratio < 1 they train on an empty caption that often"
                )
        text = json.dumps(entries, ensure_ascii=False)
        lease.verify()  # data_info.json makes the export whole: never into another's folder
        for u in info_urls:  # written last: a folder with data_info.json is complete
            io.write_text_atomic(u, text)
        summary.data_info = info_urls
        if link_warning:
            summary.warnings.append(link_warning)
        if sigma and not alt:
            summary.warnings.append(
                "no alternate caption (--alt-caption): PixArt-Σ's shipped configs set real_prompt_ratio=0.5, "
                "which needs one ('sharegpt4v'); train with real_prompt_ratio=1.0, as the config hints say"
            )
        common: _HintCommon = {"max_length": max_length, "scale_factor": meta.image.scale_factor}
        hints: list[dict[str, Any]] = []
        for pix_images in (False, True) if images else (False,):
            for r in sorted(res_list, reverse=True):  # the largest first: config_hint
                if "internal" in layouts and multiscale:
                    hints.append(
                        _hint(
                            f"PixArt_xl2_img{r}_internalms.py",
                            "InternalDataMS",
                            dest_url,
                            r,
                            multiscale=True,
                            load_vae_feat=not pix_images,
                            sigma=False,
                            **common,
                        )
                    )
                if "internal" in layouts and has_square:
                    hints.append(
                        _hint(
                            f"PixArt_xl2_img{r}_internal.py",
                            "InternalData",
                            dest_url,
                            r,
                            multiscale=False,
                            load_vae_feat=not pix_images,
                            sigma=False,
                            **common,
                        )
                    )
                if sigma and multiscale:
                    size = "2K" if r == 2048 else str(r)
                    kv = "_kvcompress" if r == 2048 else ""
                    hints.append(
                        _hint(
                            f"PixArt_sigma_xl2_img{size}_internalms{kv}.py",
                            "InternalDataMSSigma",
                            dest_url,
                            r,
                            multiscale=True,
                            load_vae_feat=not pix_images,
                            sigma=True,
                            real_prompt_ratio=real_prompt_ratio,
                            **common,
                        )
                    )
                if sigma and has_square:
                    hints.append(
                        _hint(
                            f"PixArt_sigma_xl2_img{r}_internal.py",
                            "InternalDataSigma",
                            dest_url,
                            r,
                            multiscale=False,
                            load_vae_feat=not pix_images,
                            sigma=True,
                            real_prompt_ratio=real_prompt_ratio,
                            **common,
                        )
                    )
        summary.config_hints = hints
        summary.config_hint = hints[0] if hints else {}
        return summary
