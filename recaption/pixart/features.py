"""Finding and checking a folder of feature shards: the part PixArt's Dataset and exporter share."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from recaption import io
from recaption.encoder import schema as S
from recaption.errors import ConfigError, SourceError

# part-00003.parquet, or part-00003-001.parquet when a shard was split into several files.
FEATURE_FILE_RE = re.compile(r"^part-\d{5,}(-\d{3,})?\.parquet$")


def list_feature_files(features: str | Sequence[str]) -> list[str]:
    """The feature files of a folder (``part-*.parquet``, hidden and ``_`` names skipped), a single
    file, a glob, or a list of any of these; sorted, without duplicates."""
    if not isinstance(features, str):
        out: list[str] = []
        for f in features:
            out += list_feature_files(f)
        return sorted(dict.fromkeys(out))
    if any(ch in features for ch in "*?["):
        files = [u for u in io.glob(features) if u.endswith(".parquet")]
    elif io.isdir(features):
        from recaption.shards.layout import StageDir

        sd = StageDir(features)
        if io.exists(sd.stage_file):  # recaption's output: only what finished shards' markers list
            files = sd.data_files()
        else:
            files = [u for u in io.listdir(features) if FEATURE_FILE_RE.match(io.basename(u))]
    elif io.exists(features):
        files = [features]
    else:
        raise SourceError(features, "no such file or folder")
    if not files:
        raise SourceError(
            features, "holds no feature shards", ["part-NNNNN.parquet files (recaption encode's output)"]
        )
    return sorted(files)


@dataclass
class FeatureSet:
    """The files of one feature set and their common metadata (checked to agree)."""

    files: list[str]
    metadata: S.FeatureMetadata
    per_file: dict[str, S.FeatureMetadata]

    @classmethod
    def open(cls, features: str | Sequence[str]) -> FeatureSet:
        """List and check the files; :class:`~recaption.encoder.schema.MixedFeaturesError` when
        they were made with different presets or models."""
        files = list_feature_files(features)
        per_file = {f: S.read_metadata(f) for f in files}
        common = S.check_compatible(per_file)
        return cls(files=files, metadata=common, per_file=per_file)

    def require_text(self, caption_field: str | None) -> str:
        """The caption field to use (default: the first encoded); errors name what exists."""
        text = self.metadata.text
        if text is None or not text.fields:
            raise ConfigError("caption field", caption_field, "none: these features have no T5 text features")
        if caption_field is None:
            return text.fields[0]
        for url, meta in self.per_file.items():
            fields = meta.text.fields if meta.text else []
            if caption_field not in fields:
                raise ConfigError("caption field", caption_field, fields, hint=f"(in {url})")
        return caption_field

    def require_resolution(self, resolution: int | None) -> int:
        """The resolution to use (default: the largest present in every file)."""
        if self.metadata.image is None:
            raise ConfigError("resolution", resolution, "none: these features have no VAE latents")
        common = set.intersection(
            *(set(m.image.resolutions if m.image else []) for m in self.per_file.values())
        )
        if resolution is None:
            if not common:
                raise ConfigError("resolution", None, "a resolution every file has; they share none")
            return max(common)
        if resolution not in common:
            missing = [
                u for u, m in self.per_file.items() if not m.image or resolution not in m.image.resolutions
            ]
            raise ConfigError(
                "resolution",
                resolution,
                sorted(common),
                hint=f"{len(missing)} file(s) lack it, e.g. {missing[0]}",
            )
        return int(resolution)


def open_parquet(url: str) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` on an fsspec URL (the file object stays open with it)."""
    import pyarrow.parquet as pq

    f = io.open_file(url, "rb").open()
    return pq.ParquetFile(f)


def ratio_key_for(ratio: float, resolution: int) -> str:
    """PixArt's string key for a stored ``vae_R_ratio`` (float32) value."""
    from recaption.encoder.buckets import table_for

    return min(table_for(resolution), key=lambda k: abs(float(k) - ratio))
