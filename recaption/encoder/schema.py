"""The feature-shard schema: one parquet row per image, tensors as raw bytes, shapes in columns.

Columns (``F`` = an encoded caption field such as ``dense`` or ``raw``; ``R`` = a resolution among
256, 512, 1024, 2048, 2880):

=============================  ==========================  ==========================================
column                         arrow type                  meaning
=============================  ==========================  ==========================================
``key``                        string (not null)           the sample's key
``image_uri``                  string                      where the image is (file, tar, parquet)
``image_member``               string                      tar member / ``row:<i>:<column>``
``image_offset``               int64                       byte offset of the member (-1: none)
``image_length``               int64                       byte length of the member (-1: none)
``width``, ``height``          int32                       original image size (EXIF applied)
``t5_F``                       binary                      T5 ``last_hidden_state`` at the real
                                                           (unmasked) tokens: (``t5_F_len``, hidden)
``t5_F_len``                   int32                       number of real tokens
``t5_F_truncated``             bool                        the caption had more than max_length tokens
``t5_F_text``                  string                      the exact text encoded (after cleaning)
``vae_R``                      binary                      posterior mean ‖ std on the channel axis:
                                                           (2·C, vae_R_h / 8, vae_R_w / 8)
``vae_R_h``, ``vae_R_w``       int32                       the bucket's pixel size [H, W]
``vae_R_ratio``                float32                     the bucket key (height/width), PixArt's
                                                           ``data_info['aspect_ratio']``
``vae_R_crop``                 fixed_size_list<int32>[4]   [top, left, height, width] of the crop in
                                                           the resized image
``vae_R_resized_h``, ``_w``    int32                       the size the image was resized to
``vae_R_square``               binary                      with ``square`` in the metadata: the
                                                           centre-crop R x R latent single-scale
                                                           training reads, (2·C, R/8, R/8)
``vae_R_square_crop``          fixed_size_list<int32>[4]   its crop box in the resized image
``vae_R_square_resized_h/_w``  int32                       its resized size (shorter side = R)
=============================  ==========================  ==========================================

Tensors are C-contiguous little-endian bytes of the dtype named in the file metadata (``float16``
or ``bfloat16``; bfloat16 is the raw 2-byte pattern, since numpy has no bfloat16): use
:func:`pack_tensor` / :func:`unpack_tensor`. Other columns may follow (a stage may keep
``raw_caption``, ``meta``…); readers ignore what they do not know. Every feature column is nullable:
a row whose image could not be encoded at one resolution has nulls there.

The file's key-value metadata ``recaption`` holds :class:`FeatureMetadata` as JSON: the schema
version, the preset, the T5 model/revision/hidden size/dtype/max_length/cleaning, the VAE
model/revision/latent channels/scale factor (applied at training time, never stored in the
latents)/dtype/resolutions.

Why raw ``binary``: ``benchmarks/feature_layout.py`` (two runs on a loaded 2-core machine, so
noisy) wrote 128 KiB float16 tensors at 0.8-1.6 GB/s and read them back at 3.0-3.2 GB/s as
uncompressed ``binary``, against 0.14-0.17 / 0.28-0.41 GB/s as ``fixed_size_list<float16>`` and
0.17-0.19 / 0.37-0.41 GB/s as ``list<float16>`` (5-11x slower). ``fixed_size_binary`` is as fast as
``binary`` but cannot hold variable sizes (T5 lengths, buckets). lz4/snappy saved nothing on latents
and zstd 8% at a 3-5x slower write, so tensor columns are written uncompressed, without dictionary or
statistics; the small columns use zstd. All of this is plain parquet: pandas, polars, duckdb and
``datasets`` read it without our code.

Output files: input shard ``i`` becomes ``part-{i:05d}.parquet`` (the stage layout's rule), or,
with a target file size (``recaption encode --max-file-rows/--max-file-size``), the files
``part-{i:05d}-{j:03d}.parquet``, split greedily in row order so reruns produce the same files
(:class:`~recaption.shards.size.ShardSizePolicy`).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recaption.errors import ConfigError, RecaptionError
from recaption.shards.size import ShardSizePolicy

SCHEMA_VERSION = 1
METADATA_KEY = "recaption"
RESOLUTIONS = (256, 512, 1024, 2048, 2880)
TENSOR_DTYPES = ("float16", "bfloat16", "float32")
VAE_DOWNSAMPLE = 8

IDENTITY_COLUMNS = ("key", "image_uri", "image_member", "image_offset", "image_length", "width", "height")
TEXT_SUFFIXES = ("", "_len", "_truncated", "_text")
IMAGE_SUFFIXES = ("", "_h", "_w", "_ratio", "_crop", "_resized_h", "_resized_w")
# The square (single-scale) latents stored beside the bucketed ones: ``vae_{R}_square{suffix}``.
SQUARE = "_square"
SQUARE_SUFFIXES = ("", "_crop", "_resized_h", "_resized_w")

_FIELD_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class FeatureSchemaError(RecaptionError, ValueError):
    """A table or file that does not follow the feature-shard schema; ``problems`` lists each one."""

    def __init__(self, where: str, problems: Sequence[str]) -> None:
        self.where = where
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{where} does not follow the feature-shard schema:\n{lines}")


class MixedFeaturesError(RecaptionError, ValueError):
    """Feature files made with different models or settings, which must not be trained on together."""


# -- column names ------------------------------------------------------------------------------
def t5_column(field_name: str, suffix: str = "") -> str:
    """``t5_{field}{suffix}``; ``suffix`` is one of ``""``, ``_len``, ``_truncated``, ``_text``."""
    return f"t5_{field_name}{suffix}"


def vae_column(resolution: int, suffix: str = "") -> str:
    """``vae_{R}{suffix}``; ``suffix`` is one of ``""``, ``_h``, ``_w``, ``_ratio``, ``_crop``, …"""
    return f"vae_{int(resolution)}{suffix}"


def square_column(resolution: int, suffix: str = "") -> str:
    """``vae_{R}_square{suffix}``: the centre-crop square latent at ``resolution`` (see the table)."""
    return vae_column(resolution, SQUARE + suffix)


def check_caption_field(name: str) -> str:
    """Caption field names become column names: lowercase letters, digits and ``_``."""
    if not isinstance(name, str) or not _FIELD_RE.match(name):
        raise ConfigError(
            "caption field", name, "a lowercase name of letters, digits and '_' (e.g. 'dense', 'raw')"
        )
    return name


def check_resolution(resolution: int) -> int:
    if resolution not in RESOLUTIONS:
        raise ConfigError("resolution", resolution, RESOLUTIONS)
    return int(resolution)


# -- arrow fields ------------------------------------------------------------------------------
def identity_fields() -> list[Any]:
    """The sample columns a feature row keeps (the shared per-sample fields, by name)."""
    from recaption.columns import sample_fields

    return [f for f in sample_fields() if f.name in IDENTITY_COLUMNS]


def text_fields(field_name: str) -> list[Any]:
    import pyarrow as pa

    check_caption_field(field_name)
    return [
        pa.field(t5_column(field_name), pa.binary()),
        pa.field(t5_column(field_name, "_len"), pa.int32()),
        pa.field(t5_column(field_name, "_truncated"), pa.bool_()),
        pa.field(t5_column(field_name, "_text"), pa.string()),
    ]


def image_fields(resolution: int) -> list[Any]:
    import pyarrow as pa

    r = check_resolution(resolution)
    return [
        pa.field(vae_column(r), pa.binary()),
        pa.field(vae_column(r, "_h"), pa.int32()),
        pa.field(vae_column(r, "_w"), pa.int32()),
        pa.field(vae_column(r, "_ratio"), pa.float32()),
        pa.field(vae_column(r, "_crop"), pa.list_(pa.int32(), 4)),
        pa.field(vae_column(r, "_resized_h"), pa.int32()),
        pa.field(vae_column(r, "_resized_w"), pa.int32()),
    ]


def square_fields(resolution: int) -> list[Any]:
    import pyarrow as pa

    r = check_resolution(resolution)
    return [
        pa.field(square_column(r), pa.binary()),
        pa.field(square_column(r, "_crop"), pa.list_(pa.int32(), 4)),
        pa.field(square_column(r, "_resized_h"), pa.int32()),
        pa.field(square_column(r, "_resized_w"), pa.int32()),
    ]


def feature_schema(
    caption_fields: Iterable[str] = (),
    resolutions: Iterable[int] = (),
    metadata: FeatureMetadata | None = None,
    extra_fields: Iterable[Any] = (),
) -> Any:
    """The ``pyarrow.Schema`` of a feature shard, with ``metadata`` attached when given.

    When ``metadata`` is given and ``caption_fields``/``resolutions`` are empty, they are taken
    from it.
    """
    import pyarrow as pa

    fields_ = list(caption_fields)
    res = list(resolutions)
    if metadata is not None:
        if not fields_ and metadata.text is not None:
            fields_ = list(metadata.text.fields)
        if not res and metadata.image is not None:
            res = list(metadata.image.resolutions)
    out = identity_fields()
    for f in fields_:
        out += text_fields(f)
    square = metadata is not None and metadata.image is not None and metadata.image.square
    for r in sorted(set(res)):
        out += image_fields(r)
        if square:
            out += square_fields(r)
    out += list(extra_fields)
    schema = pa.schema(out)
    if metadata is not None:
        schema = schema.with_metadata(metadata.schema_metadata())
    return schema


def tensor_columns(schema: Any) -> list[str]:
    """The names of the tensor (``binary``) columns of a feature schema."""
    import pyarrow as pa

    out = []
    for f in schema:
        if f.type == pa.binary() and (f.name.startswith("t5_") or f.name.startswith("vae_")):
            out.append(f.name)
    return out


def parquet_write_options(schema: Any, compression: str = "zstd") -> dict[str, Any]:
    """Keyword arguments for ``pq.ParquetWriter``/``pq.write_table`` that write this schema fast.

    Tensor columns: no compression, no dictionary, no statistics (see the module docstring for
    the measurement); every other column: ``compression`` (zstd by default) with dictionary and
    statistics as pyarrow does by default.
    """
    tensors = set(tensor_columns(schema))
    others = [f.name for f in schema if f.name not in tensors]
    return {
        "compression": {name: ("none" if name in tensors else compression) for name in schema.names},
        "use_dictionary": others,
        "write_statistics": others,
    }


# -- tensors -----------------------------------------------------------------------------------
def _dtype_name(x: Any) -> str:
    """``float16``/``bfloat16``/``float32``… for a numpy array or a torch tensor."""
    if isinstance(x, np.ndarray):
        return str(x.dtype)
    return str(x.dtype).removeprefix("torch.")


def pack_tensor(x: Any, dtype: str | None = None) -> bytes:
    """C-contiguous little-endian bytes of a numpy array or a CPU/GPU torch tensor.

    ``dtype`` converts first (``"float16"``, ``"bfloat16"``, ``"float32"``). A numpy ``uint16``
    array is taken as bfloat16 bit patterns when ``dtype="bfloat16"`` (numpy has no bfloat16).
    """
    if dtype is not None and dtype not in TENSOR_DTYPES:
        raise ConfigError("tensor dtype", dtype, TENSOR_DTYPES)
    if not isinstance(x, np.ndarray):  # a torch tensor
        import torch

        t = x.detach()
        if dtype is not None:
            t = t.to(getattr(torch, dtype))
        t = t.contiguous().cpu()
        if t.dtype == torch.bfloat16:
            return _le_bytes(t.view(torch.int16).numpy())
        return _le_bytes(t.numpy())
    if dtype == "bfloat16":
        if x.dtype == np.uint16:
            return _le_bytes(x)
        return _le_bytes(float32_to_bfloat16_bits(x))
    if dtype is not None:
        x = x.astype(dtype, copy=False)
    return _le_bytes(x)


def _le_bytes(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
        a = a.byteswap().view(a.dtype.newbyteorder("<"))
    return a.tobytes()


def float32_to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of ``x``, rounded to nearest even as torch does."""
    f = np.ascontiguousarray(x, dtype=np.float32)
    bits = f.view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def tensor_nbytes(shape: Sequence[int], dtype: str) -> int:
    itemsize = 4 if dtype == "float32" else 2
    return int(math.prod(shape)) * itemsize


def unpack_tensor(buf: bytes | memoryview, shape: Sequence[int], dtype: str, *, to: str = "numpy") -> Any:
    """The inverse of :func:`pack_tensor`.

    ``to="numpy"``: a numpy array (float16/float32; bfloat16 comes back as float32, exactly);
    ``to="torch"``: a CPU tensor of the stored dtype (``torch.bfloat16`` for bfloat16).
    """
    if dtype not in TENSOR_DTYPES:
        raise ConfigError("tensor dtype", dtype, TENSOR_DTYPES)
    expected = tensor_nbytes(shape, dtype)
    if len(buf) != expected:
        raise ValueError(
            f"tensor has {len(buf)} bytes; shape {tuple(shape)} of {dtype} needs {expected} bytes"
        )
    raw_dtype = {"float16": "<f2", "bfloat16": "<u2", "float32": "<f4"}[dtype]
    arr = np.frombuffer(buf, dtype=raw_dtype).reshape(tuple(shape))
    if to == "numpy":
        return bfloat16_bits_to_float32(arr) if dtype == "bfloat16" else arr
    if to == "torch":
        import torch

        if dtype == "bfloat16":
            return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
        return torch.from_numpy(arr.copy())
    raise ConfigError("to", to, ("numpy", "torch"))


# -- rows --------------------------------------------------------------------------------------
def text_row(field_name: str, features: Any, *, text: str, truncated: bool, dtype: str | None = None) -> dict:
    """The ``t5_{F}*`` columns of one row from a (len, hidden) feature array."""
    n = int(features.shape[0])
    return {
        t5_column(field_name): pack_tensor(features, dtype),
        t5_column(field_name, "_len"): n,
        t5_column(field_name, "_truncated"): bool(truncated),
        t5_column(field_name, "_text"): text,
    }


def image_row(
    resolution: int,
    latent: Any,
    *,
    bucket_hw: tuple[int, int],
    ratio: float,
    crop: Sequence[int],
    resized_hw: tuple[int, int],
    dtype: str | None = None,
) -> dict:
    """The ``vae_{R}*`` columns of one row from a (2C, H/8, W/8) latent (mean ‖ std)."""
    r = int(resolution)
    return {
        vae_column(r): pack_tensor(latent, dtype),
        vae_column(r, "_h"): int(bucket_hw[0]),
        vae_column(r, "_w"): int(bucket_hw[1]),
        vae_column(r, "_ratio"): float(ratio),
        vae_column(r, "_crop"): [int(v) for v in crop],
        vae_column(r, "_resized_h"): int(resized_hw[0]),
        vae_column(r, "_resized_w"): int(resized_hw[1]),
    }


def square_row(
    resolution: int,
    latent: Any,
    *,
    crop: Sequence[int],
    resized_hw: tuple[int, int],
    dtype: str | None = None,
) -> dict:
    """The ``vae_{R}_square*`` columns of one row from a (2C, R/8, R/8) latent (mean ‖ std)."""
    r = int(resolution)
    return {
        square_column(r): pack_tensor(latent, dtype),
        square_column(r, "_crop"): [int(v) for v in crop],
        square_column(r, "_resized_h"): int(resized_hw[0]),
        square_column(r, "_resized_w"): int(resized_hw[1]),
    }


# -- metadata ----------------------------------------------------------------------------------
@dataclass
class TextMeta:
    """How the ``t5_*`` columns were made."""

    model_id: str
    revision: str | None
    hidden_size: int
    dtype: str  # stored dtype of the t5_* tensors
    max_length: int  # PixArt's model_max_length: the training length features are padded to
    cleaning: bool
    fields: list[str] = field(default_factory=list)


@dataclass
class ImageMeta:
    """How the ``vae_*`` columns were made."""

    model_id: str
    revision: str | None
    latent_channels: int
    scale_factor: float  # applied at training time, never to the stored latents
    dtype: str  # stored dtype of the vae_* tensors
    resolutions: list[int] = field(default_factory=list)
    multiscale: bool = True  # False: square crops (PixArt's single-scale default_train)
    vae_preset: str = ""
    compute_dtype: str = ""
    max_ratio: float = 4.0
    # True: vae_{R}_square columns too (single-scale training's centre crop, beside the buckets)
    square: bool = False
    # "crop": resize to cover the bucket, centre crop (PixArt's training transform); "stretch":
    # resize straight to the bucket (PixArt's tools/extract_features.py --multi_scale)
    resize: str = "crop"


@dataclass
class FeatureMetadata:
    """The ``recaption`` key-value metadata of a feature shard."""

    preset: str
    text: TextMeta | None = None
    image: ImageMeta | None = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def schema_metadata(self) -> dict[bytes, bytes]:
        return {METADATA_KEY.encode(): self.to_json().encode()}

    @classmethod
    def from_json(cls, text: str | bytes) -> FeatureMetadata:
        d = json.loads(text)
        return cls(
            preset=str(d.get("preset", "")),
            text=TextMeta(**d["text"]) if d.get("text") else None,
            image=ImageMeta(**d["image"]) if d.get("image") else None,
            schema_version=int(d.get("schema_version", 0)),
        )

    @classmethod
    def from_schema(cls, schema: Any) -> FeatureMetadata | None:
        md = schema.metadata or {}
        raw = md.get(METADATA_KEY.encode())
        return None if raw is None else cls.from_json(raw)

    def flat(self) -> dict[str, Any]:
        """``{"preset": …, "text.max_length": …, "image.model_id": …}``: for comparisons and messages."""
        out: dict[str, Any] = {"schema_version": self.schema_version, "preset": self.preset}
        for section in ("text", "image"):
            sub = getattr(self, section)
            if sub is None:
                out[section] = None
                continue
            for k, v in asdict(sub).items():
                out[f"{section}.{k}"] = v
        return out


# What must agree between files that are trained on together. The set of resolutions may differ
# (the loader checks the one it needs). Stored dtypes may not: float16 and bfloat16 are both two
# bytes, and a file decoded with the other's dtype gives wrong numbers without any error.
COMPATIBILITY_FIELDS = (
    "schema_version",
    "preset",
    "text",
    "text.model_id",
    "text.revision",
    "text.hidden_size",
    "text.max_length",
    "text.cleaning",
    "text.dtype",
    "image",
    "image.model_id",
    "image.revision",
    "image.latent_channels",
    "image.scale_factor",
    "image.multiscale",
    "image.resize",
    "image.dtype",
)


def metadata_differences(a: FeatureMetadata, b: FeatureMetadata) -> dict[str, tuple[Any, Any]]:
    """The compatibility fields whose values differ: ``{name: (value in a, value in b)}``."""
    fa, fb = a.flat(), b.flat()
    out = {}
    for name in COMPATIBILITY_FIELDS:
        if name in ("text", "image"):
            present_a = any(k.startswith(name + ".") for k in fa)
            present_b = any(k.startswith(name + ".") for k in fb)
            if present_a != present_b:
                out[name] = ("present" if present_a else "absent", "present" if present_b else "absent")
            continue
        if name in fa and name in fb and fa[name] != fb[name]:
            out[name] = (fa[name], fb[name])
    return out


def check_compatible(metas: Mapping[str, FeatureMetadata]) -> FeatureMetadata:
    """Refuse files made with different presets/models; returns the common metadata.

    The error names the first file, each file that differs from it, and every differing field.
    """
    if not metas:
        raise ValueError("no feature files to check")
    items = list(metas.items())
    first_url, first = items[0]
    lines = []
    for url, meta in items[1:]:
        diff = metadata_differences(first, meta)
        if diff:
            fields_ = "; ".join(f"{k}: {va!r} vs {vb!r}" for k, (va, vb) in diff.items())
            lines.append(f"{url} differs from {first_url}: {fields_}")
    if lines:
        shown = lines[:10] + ([f"... and {len(lines) - 10} more file(s)"] if len(lines) > 10 else [])
        raise MixedFeaturesError(
            "the feature files mix presets, models or stored dtypes and cannot be trained on together "
            "(encode them again with one setting, or point at one run's folder):\n  " + "\n  ".join(shown)
        )
    return first


def read_metadata(url: str) -> FeatureMetadata:
    """The ``recaption`` metadata of a parquet file (reads only the footer)."""
    import pyarrow.parquet as pq

    from recaption import io

    with io.open_file(url, "rb") as f:
        schema = pq.ParquetFile(f).schema_arrow
    meta = FeatureMetadata.from_schema(schema)
    if meta is None:
        raise FeatureSchemaError(url, [f"no {METADATA_KEY!r} key-value metadata (not a feature shard?)"])
    return meta


# -- validation --------------------------------------------------------------------------------
def _expected_types() -> dict[str, Any]:
    import pyarrow as pa

    return {
        "": pa.binary(),
        "_len": pa.int32(),
        "_truncated": pa.bool_(),
        "_text": pa.string(),
        "_h": pa.int32(),
        "_w": pa.int32(),
        "_ratio": pa.float32(),
        "_crop": pa.list_(pa.int32(), 4),
        "_resized_h": pa.int32(),
        "_resized_w": pa.int32(),
    }


def validate(table_or_schema: Any, *, where: str = "table", deep: bool = False) -> FeatureMetadata:
    """Check a table (or a schema) against the feature-shard schema; returns its metadata.

    Checks: the metadata is present and parses; the identity columns and every column of each
    caption field and resolution the metadata names exist with the right arrow type. With
    ``deep=True`` and a table, also each tensor's byte length against its shape columns, bucket
    sizes (multiples of 8, the table's ratio) and crop boxes. Raises :class:`FeatureSchemaError`
    listing every problem found.
    """
    import pyarrow as pa

    is_table = isinstance(table_or_schema, pa.Table)
    schema = table_or_schema.schema if is_table else table_or_schema
    problems: list[str] = []
    try:
        meta = FeatureMetadata.from_schema(schema)
    except Exception as e:
        raise FeatureSchemaError(where, [f"the {METADATA_KEY!r} metadata is not valid: {e}"]) from None
    if meta is None:
        raise FeatureSchemaError(
            where,
            [f"no {METADATA_KEY!r} key-value metadata; available keys: {sorted(schema.metadata or {})}"],
        )
    if meta.schema_version != SCHEMA_VERSION:
        problems.append(f"schema_version {meta.schema_version} (this recaption reads {SCHEMA_VERSION})")
    types = {f.name: f.type for f in schema}
    identity = {f.name: f.type for f in identity_fields()}
    expected: dict[str, Any] = dict(identity)
    ex = _expected_types()
    if meta.text is not None:
        if meta.text.dtype not in TENSOR_DTYPES:
            problems.append(f"text.dtype {meta.text.dtype!r} is not one of {TENSOR_DTYPES}")
        for f in meta.text.fields:
            for s in TEXT_SUFFIXES:
                expected[t5_column(f, s)] = ex[s]
    if meta.image is not None:
        if meta.image.dtype not in TENSOR_DTYPES:
            problems.append(f"image.dtype {meta.image.dtype!r} is not one of {TENSOR_DTYPES}")
        for r in meta.image.resolutions:
            if r not in RESOLUTIONS:
                problems.append(f"image.resolutions has {r!r}; known resolutions: {RESOLUTIONS}")
                continue
            for s in IMAGE_SUFFIXES:
                expected[vae_column(r, s)] = ex[s]
            if meta.image.square:
                for s in SQUARE_SUFFIXES:
                    expected[square_column(r, s)] = ex[s]
    missing = [n for n in expected if n not in types]
    if missing:
        problems.append(f"missing column(s) {missing}; available: {sorted(types)}")
    for name, want in expected.items():
        if name in types and types[name] != want:
            problems.append(f"column {name!r} is {types[name]}, expected {want}")
    if deep and is_table and not problems:
        problems += _deep_check(table_or_schema, meta)
    if problems:
        raise FeatureSchemaError(where, problems)
    return meta


def _deep_check(table: Any, meta: FeatureMetadata, limit: int = 20) -> list[str]:
    from recaption.encoder.buckets import table_for

    problems: list[str] = []
    keys = table.column("key").to_pylist()
    if meta.text is not None:
        item = 4 if meta.text.dtype == "float32" else 2
        for f in meta.text.fields:
            blobs = table.column(t5_column(f))
            lens = table.column(t5_column(f, "_len")).to_pylist()
            for i, n in enumerate(lens):
                b = blobs[i].as_py() if blobs[i].is_valid else None
                if b is None or n is None:
                    continue
                want = n * meta.text.hidden_size * item
                if len(b) != want:
                    problems.append(
                        f"row {i} (key {keys[i]!r}): {t5_column(f)} has {len(b)} bytes, "
                        f"{t5_column(f, '_len')}={n} x hidden {meta.text.hidden_size} needs {want}"
                    )
    if meta.image is not None:
        item = 4 if meta.image.dtype == "float32" else 2
        c2 = 2 * meta.image.latent_channels
        for r in meta.image.resolutions:
            tab = table_for(r)
            cols = {s: table.column(vae_column(r, s)).to_pylist() for s in IMAGE_SUFFIXES if s}
            blobs = table.column(vae_column(r))
            for i in range(table.num_rows):
                if not blobs[i].is_valid:
                    continue
                h, w, ratio = cols["_h"][i], cols["_w"][i], cols["_ratio"][i]
                b = len(blobs[i].as_py())
                want = c2 * (h // VAE_DOWNSAMPLE) * (w // VAE_DOWNSAMPLE) * item
                where = f"row {i} (key {keys[i]!r}) at {r}"
                if h % VAE_DOWNSAMPLE or w % VAE_DOWNSAMPLE:
                    problems.append(f"{where}: bucket {h}x{w} is not a multiple of {VAE_DOWNSAMPLE}")
                if b != want:
                    problems.append(
                        f"{where}: {vae_column(r)} has {b} bytes, (2C={c2}, {h}/8, {w}/8) needs {want}"
                    )
                if meta.image.multiscale:
                    if not any(
                        abs(float(k) - ratio) < 1e-6 and [h, w] == [int(v) for v in hw]
                        for k, hw in tab.items()
                    ):
                        problems.append(
                            f"{where}: bucket {h}x{w} with ratio {ratio} is not in ASPECT_RATIO_{r}"
                        )
                elif (h, w) != (r, r):
                    problems.append(f"{where}: single-scale crop is {h}x{w}, expected {r}x{r}")
                crop = cols["_crop"][i]
                if crop is None or crop[2:] != [h, w]:
                    problems.append(f"{where}: crop {crop} does not have the bucket's size {h}x{w}")
                if meta.image.square:
                    sq = table.column(square_column(r))[i]
                    want_sq = c2 * (r // VAE_DOWNSAMPLE) ** 2 * item
                    if sq.is_valid and len(sq.as_py()) != want_sq:
                        problems.append(
                            f"{where}: {square_column(r)} has {len(sq.as_py())} bytes, "
                            f"(2C={c2}, {r}/8, {r}/8) needs {want_sq}"
                        )
                if len(problems) >= limit:
                    return problems
    return problems


def validate_file(url: str, *, deep: bool = False) -> FeatureMetadata:
    """:func:`validate` on a parquet file (``deep`` reads the whole file)."""
    import pyarrow.parquet as pq

    from recaption import io

    with io.open_file(url, "rb") as f:
        pf = pq.ParquetFile(f)
        if not deep:
            return validate(pf.schema_arrow, where=url)
        return validate(pf.read(), where=url, deep=True)


# -- shard size --------------------------------------------------------------------------------
# The policy is the shard layout's (recaption.shards.size); imported here for write_feature_table.
def row_nbytes(table: Any) -> list[int]:
    """Bytes of each row's tensor columns (the bulk of a feature file)."""
    from recaption.shards import size

    if table.num_rows == 0:
        return []
    return size.row_nbytes(table, tensor_columns(table.schema))


def write_feature_table(url_or_file: Any, table: Any, policy: ShardSizePolicy | None = None) -> list[int]:
    """Write one feature file (a URL, written atomically, or an open file) with the fast options and
    the policy's row groups; returns the row-group sizes.

    (With ``split="files"`` call :meth:`ShardSizePolicy.plan` first and write each chunk.)
    """
    import pyarrow.parquet as pq

    policy = policy or ShardSizePolicy()
    chunks = policy.plan(row_nbytes(table)) if policy.split == "row_groups" else [(0, table.num_rows)]
    opts = parquet_write_options(table.schema)
    sizes = []

    def write(sink: Any) -> None:
        with pq.ParquetWriter(sink, table.schema, **opts) as writer:
            for a, b in chunks:
                writer.write_table(table.slice(a, b - a), row_group_size=max(1, b - a))
                sizes.append(b - a)

    if isinstance(url_or_file, str):
        from recaption import io

        with io.atomic_open(url_or_file, "wb") as f:
            write(f)
    else:
        write(url_or_file)
    return sizes
