"""The encode stage: caption shards in, PixArt feature shards out (one per caption shard).

For every captioned sample it encodes the chosen captions with T5 (features at the real tokens
only) and reopens the image through its reference to store VAE latents (posterior mean ‖ std) at
each resolution's aspect-ratio bucket, resized and centre-cropped as PixArt's training does. The
schema is :mod:`recaption.encoder.schema`. Samples that cannot be encoded (no caption, an image
that no longer opens or does not decode, a ratio PixArt drops) get a manifest row; the rest go on.

T5 and the VAE can run on different workers: a text-only stage (``image=None``) writes the T5
columns, and a stage with ``text=None, text_from=<that folder>`` adds the latents to them.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from recaption.encoder import schema as S
from recaption.encoder.t5 import TextEncoder, TextEncoderConfig
from recaption.encoder.vae import PREPROCESS_RULES, ImageEncoder, VaeConfig
from recaption.errors import ConfigError
from recaption.images.decode import DEFAULT_MAX_PIXELS, decode_image
from recaption.readers.base import Failure, ImageRef, InputShard
from recaption.shards.inputs import read_shard_table, stage_output_shards
from recaption.shards.writer import ShardOutput
from recaption.stage import Resources, Stage

# Which caption column each encoded field reads; any other field is a caption column's own name
# (one written by ``recaption caption --prompt COLUMN=...``), e.g. ``short_caption``.
FIELD_COLUMNS = {"dense": "dense_caption", "raw": "raw_caption"}


def field_column(f: str) -> str:
    """The caption column an encoded field reads."""
    return FIELD_COLUMNS.get(f, f)


def _valid_field(f: str) -> bool:
    return f in FIELD_COLUMNS or (f.isidentifier() and f not in FIELD_COLUMNS.values())


PRESETS: dict[str, dict[str, Any]] = {
    # PixArt-α: T5-XXL at 120 tokens with caption cleaning; SD's VAE (sd-vae-ft-ema); 256/512/1024.
    "alpha": {"t5": "alpha", "vae": "sd-vae-ft-ema", "resolutions": (256, 512, 1024)},
    # PixArt-Σ: the same T5 at 300 tokens, no cleaning; the SDXL VAE; 256-1024 by default (2048
    # for its 2K checkpoints: resolutions=(..., 2048)).
    "sigma": {"t5": "sigma", "vae": "sdxl", "resolutions": (256, 512, 1024)},
}
_TEXT_SEMANTIC = ("preset", "model", "revision", "max_length", "clean", "store_dtype", "keep_fp32_wo")
_IMAGE_SEMANTIC = (
    "preset",
    "model",
    "revision",
    "subfolder",
    "store_dtype",
    "resolutions",
    "multiscale",
    "max_ratio",
    "min_ratio",
    "tiling",
)


def encode_configs(
    preset: str = "alpha",
    *,
    t5_model: str | None = None,
    vae_model: str | None = None,
    resolutions: tuple[int, ...] | None = None,
    device: str = "auto",
    t5_hidden_size: int | None = None,
    store_dtype: str = "float16",
    square: bool = False,
    vae_resize: str = "crop",
) -> tuple[TextEncoderConfig, VaeConfig]:
    """The T5 and VAE configurations of a PixArt preset, with overrides."""
    if preset not in PRESETS:
        raise ConfigError("--preset", preset, sorted(PRESETS))
    p = PRESETS[preset]
    text = TextEncoderConfig(
        preset=p["t5"],
        model=t5_model,
        device=device,
        expected_hidden_size=t5_hidden_size,
        store_dtype=store_dtype,
    )
    image = VaeConfig(
        preset=p["vae"],
        model=vae_model,
        device=device,
        resolutions=tuple(resolutions if resolutions is not None else p["resolutions"]),
        store_dtype=store_dtype,
        square=square,
        resize=vae_resize,
    )
    return text, image


@dataclass
class _PendingBatch:
    """A row batch whose T5 columns are done and whose latents wait in the VAE queues."""

    ok: list[tuple[dict[str, Any], Any]]
    rows: list[dict[str, Any]]
    failed: set[int]
    tags: list[int]


@dataclass
class EncodeStage(Stage):
    """T5 features and VAE latents for every captioned sample of a caption-shard folder."""

    captions: str
    text: TextEncoderConfig | None = field(default_factory=TextEncoderConfig)
    image: VaeConfig | None = field(default_factory=VaeConfig)
    fields: tuple[str, ...] = ("dense",)
    preset: str = "alpha"
    text_from: str | None = None  # a text-only feature folder whose t5 columns this stage reuses
    expected_shards: tuple[int, ...] | None = None  # pipeline: the upstream's shard indices
    batch_rows: int = 64  # samples per encode call (and per parquet row group)
    # A target size per data file: a shard over it is split into part-i-000, part-i-001...
    # (file layout only, so not in the fingerprint: a resumed run may change it).
    max_file_rows: int | None = None
    max_file_bytes: int | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    decode_threads: int = 4
    # Rows whose generated captions carry these flags (length, repetition, fallback, error) are
    # dropped, each with a manifest row; see recaption.encoder.flags.
    drop_flagged: tuple[str, ...] = ()
    # VAE batching (not in the fingerprint: the latents do not depend on it). True: images wait in
    # per-(resolution, bucket) queues across row batches until a VAE batch is full (flushed at the
    # shard's end); False: each row batch is encoded on its own (part-full batches).
    vae_queues: bool = True
    # Images whose latents are pending in those queues at most; over it the fullest queue runs.
    vae_queue_images: int = 256
    name = "encode"

    def __post_init__(self) -> None:
        self.fields = tuple(self.fields)
        from recaption.encoder.flags import check_drop_flags

        self.drop_flagged = check_drop_flags(self.drop_flagged)
        accepted = f"{', '.join(sorted(FIELD_COLUMNS))}, or a caption column's name (e.g. short_caption)"
        for f in self.fields:
            if not isinstance(f, str) or not _valid_field(f):
                raise ConfigError("--fields", f, accepted)
        self._check_fields_exist(accepted)
        if not self.fields and self.text is not None:
            raise ConfigError(
                "--fields", "", sorted(FIELD_COLUMNS), hint="name at least one caption to encode"
            )
        if self.text is None and self.image is None:
            raise ConfigError("encode", "nothing", ("text", "image", "both"))
        if self.text is not None and self.text_from is not None:
            raise ConfigError(
                "text_from", self.text_from, "only with text=None (reuse T5 features from another run)"
            )
        if self.batch_rows < 1:
            raise ConfigError("batch_rows", self.batch_rows, "a positive number of samples")
        if self.vae_queue_images < 1:
            raise ConfigError("vae_queue_images", self.vae_queue_images, "a positive number of images")
        if self.max_file_rows is not None and self.max_file_rows < 1:
            raise ConfigError("--max-file-rows", self.max_file_rows, "a positive number of rows, or none")
        if self.max_file_bytes is not None and self.max_file_bytes < 1:
            raise ConfigError("--max-file-size", self.max_file_bytes, "a positive size, or none")
        self._text_enc: TextEncoder | None = None
        self._image_enc: ImageEncoder | None = None
        self._schema: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_text_enc=None, _image_enc=None, _schema=None)
        return state

    def _check_fields_exist(self, accepted: str) -> None:
        """A caption column named in ``fields`` must be in the caption shards (when they exist yet)."""
        named = [f for f in self.fields if f not in FIELD_COLUMNS]
        if not named or self.text is None:
            return
        from recaption import io
        from recaption.shards.layout import StageDir

        files = StageDir(self.captions).data_files() if io.exists(self.captions) else []
        if not files:
            return  # a pipeline captions first: its caption stage's schema was checked instead
        import pyarrow.parquet as pq

        with io.open_file(files[0], "rb") as f:
            names = list(pq.ParquetFile(f).schema_arrow.names)
        for f_ in named:
            if f_ not in names:
                from recaption.shards.inputs import caption_run_columns

                # the caption columns (raw and one per prompt, whatever its name), not their metadata
                columns = (
                    caption_run_columns(self.captions)
                    if io.exists(StageDir(self.captions).stage_file)
                    else sorted(n for n in names if n.endswith("caption"))
                )
                raise ConfigError(
                    "--fields", f_, accepted, hint=f"the caption shards have: {', '.join(columns)}"
                )

    # -- configuration -----------------------------------------------------------------------------
    def resources(self) -> Resources:
        devices = [c.device for c in (self.text, self.image) if c is not None]
        if any(d.startswith("cuda") for d in devices):
            return Resources(num_cpus=1, num_gpus=1)
        if any(d == "auto" for d in devices):
            return Resources(num_cpus=1, num_gpus=1, gpu_optional=True)
        return Resources(num_cpus=1)

    def fingerprint(self) -> dict[str, Any]:
        out: dict[str, Any] = {"captions": self.captions, "preset": self.preset, "fields": list(self.fields)}
        if self.text is not None:
            t = self.text.__dict__
            out["text"] = {k: t.get(k) for k in _TEXT_SEMANTIC}
        if self.image is not None:
            i = self.image.__dict__
            out["image"] = {
                k: list(i[k]) if isinstance(i.get(k), tuple) else i.get(k) for k in _IMAGE_SEMANTIC
            }
            out["image"]["preprocess_rules"] = PREPROCESS_RULES
            # only when set, so runs recorded before these options existed still resume
            if self.image.square:
                out["image"]["square"] = True
            if self.image.resize != "crop":
                out["image"]["resize"] = self.image.resize
        if self.text_from:
            out["text_from"] = self.text_from
        if self.drop_flagged:
            out["drop_flagged"] = list(self.drop_flagged)
        return out

    def shards(self) -> list[InputShard]:
        return stage_output_shards(self.captions, self.expected_shards, kind="captions")

    # -- worker ----------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.text is not None and self._text_enc is None:
            self._text_enc = TextEncoder(self.text).load()
        if self.image is not None and self._image_enc is None:
            self._image_enc = ImageEncoder(self.image).load()

    def teardown(self) -> None:
        if self._image_enc is not None:
            self._image_enc.close()
        self._text_enc = self._image_enc = None

    def metadata(self, text_meta: S.TextMeta | None = None) -> S.FeatureMetadata:
        if self._text_enc is not None:
            text_meta = S.TextMeta(**self._text_enc.text_meta(), fields=list(self.fields))
        image_meta = self._image_enc.metadata() if self._image_enc is not None else None
        return S.FeatureMetadata(preset=self.preset, text=text_meta, image=image_meta)

    def schema(self) -> Any:
        if self._schema is None:
            self.setup()
            text_meta = None
            if self.text_from is not None:
                text_meta = self._text_from_meta()
            meta = self.metadata(text_meta)
            self._schema = S.feature_schema(
                self.fields if meta.text is not None else (),
                meta.image.resolutions if meta.image is not None else (),
                meta,
            )
        return self._schema

    def parquet_options(self) -> dict[str, Any]:
        return S.parquet_write_options(self.schema())

    def size_policy(self) -> S.ShardSizePolicy | None:
        if self.max_file_rows is None and self.max_file_bytes is None:
            return None
        return S.ShardSizePolicy(max_rows=self.max_file_rows, max_bytes=self.max_file_bytes, split="files")

    def _text_from_meta(self) -> S.TextMeta:
        from recaption.shards.layout import StageDir

        files = StageDir(self.text_from or "").data_files()
        if not files:
            raise ConfigError("text_from", self.text_from, "a folder of text feature shards")
        meta = S.read_metadata(files[0])
        if meta.text is None:
            raise ConfigError("text_from", self.text_from, "feature shards with t5_* columns")
        missing = [f for f in self.fields if f not in meta.text.fields]
        if missing:
            raise ConfigError(
                "--fields",
                ",".join(self.fields),
                meta.text.fields,
                hint=f"{self.text_from} has no T5 features for {missing}",
            )
        # this run stores only the fields asked for: its metadata must say so
        return dataclasses.replace(meta.text, fields=list(self.fields))

    def process_shard(self, shard: InputShard, out: ShardOutput) -> dict[str, Any]:
        from recaption.prefetch import prefetch_batches
        from recaption.readers.refs import ImageOpener

        self.setup()
        cols = ["key", "image_uri", "image_member", "image_offset", "image_length", "width", "height"]
        from recaption.encoder.flags import describe, drop_reasons, flag_columns, meta_column

        captions = [field_column(f) for f in self.fields] if self.text is not None else []
        # the generated captions whose flags --drop-flagged reads (raw captions have none; with raw
        # alone, the dense caption's). From the fields, not from what this stage encodes: the VAE
        # half of split workers (text=None) must drop exactly the rows the T5 half dropped.
        generated = [field_column(f) for f in self.fields if field_column(f) != "raw_caption"]
        generated = generated or ["dense_caption"]
        optional = ["error", "finish_reason"]
        # another encoded caption column's error (dense_caption's is ``error``): its row has no
        # caption to encode for that field, which must not become an empty caption's features
        # (from the fields, as ``generated`` above: the VAE half of split workers fails the same rows)
        errors = {
            c: meta_column(c, "error")
            for c in map(field_column, self.fields)
            if c not in ("raw_caption", "dense_caption")
        }
        optional += [e for e in errors.values() if e not in optional]
        if self.drop_flagged:
            optional += [c for c in flag_columns(generated) if c not in optional]
        table = read_shard_table(shard, cols + captions, optional=optional)
        rows = table.to_pylist()
        text_rows = self._text_rows(shard) if self.text_from is not None else None
        opener = ImageOpener()
        todo: list[dict[str, Any]] = []
        for r in rows:
            if self.drop_flagged and (reasons := drop_reasons(r, generated, self.drop_flagged)):
                out.fail(self._failure(r, describe(r, generated, reasons)))
                for reason in reasons:
                    out.count(f"dropped_{reason}")
                continue
            if r.get("error"):
                out.fail(self._failure(r, f"no caption to encode: captioning failed ({r['error']})"))
                continue
            if column_errors := [(c, r[e]) for c, e in errors.items() if r.get(e)]:
                what = "; ".join(f"{c} captioning failed ({err})" for c, err in column_errors)
                out.fail(self._failure(r, f"no caption to encode: {what}"))
                continue
            if self.image is not None:
                w, h = r.get("width"), r.get("height")
                if w and h and self._image_enc is not None and (why := self._image_enc.check(int(w), int(h))):
                    out.fail(self._failure(r, f"skipped: {why}"))
                    out.count("dropped_aspect")
                    continue
            if text_rows is not None and r["key"] not in text_rows:
                out.fail(self._failure(r, f"no T5 features for this key in {self.text_from}"))
                continue
            todo.append(r)

        def load(r: dict[str, Any]) -> Any:
            if self.image is None:
                return None
            ref = ImageRef.from_columns(r)
            if ref is None:
                raise ValueError("the caption shard has no image reference for this sample")
            d = decode_image(opener.read(ref), max_pixels=self.max_pixels)
            return d.image, (d.width, d.height)

        from recaption.encoder.vae_queue import BucketQueues

        queues = BucketQueues(self._image_enc, self.vae_queue_images) if self._image_enc is not None else None
        # row batches whose latents are not all done yet, oldest first: written in this order
        pending: deque[_PendingBatch] = deque()
        seq = 0
        try:
            for batch in prefetch_batches(todo, load, self.batch_rows, workers=self.decode_threads, depth=2):
                ok: list[tuple[dict[str, Any], Any]] = []
                for r, value, err in zip(batch.items, batch.values, batch.errors, strict=True):
                    if err is not None:
                        out.fail(self._failure(r, f"cannot open the image: {err}"))
                        continue
                    ok.append((r, value))
                if self.image is not None:
                    keep = []
                    for r, (img, (w, h)) in ok:
                        why = self._image_enc.check(w, h) if self._image_enc is not None else None
                        if why:
                            out.fail(self._failure(r, f"skipped: {why}"))
                            out.count("dropped_aspect")
                        else:
                            keep.append((r, (img, (w, h))))
                    ok = keep
                if not ok:
                    out.progress(len(batch.items))
                    continue
                if queues is None:
                    out.write(self._encode(ok, out, text_rows))
                else:
                    rows, failed = self._encode_text(ok, out, text_rows)
                    tags = []
                    for _r, (img, size) in ok:
                        tags.append(seq)
                        queues.add(seq, img, size)
                        seq += 1
                    pending.append(_PendingBatch(ok, rows, failed, tags))
                    if not self.vae_queues:
                        queues.flush()
                    self._write_ready(pending, queues, out)
                out.progress(len(batch.items))
            if queues is not None:
                queues.flush()  # the shard's end: every part-full queue
                self._write_ready(pending, queues, out)
                if pending:
                    raise RuntimeError(f"{len(pending)} row batches still wait for latents after the flush")
        finally:
            opener.close()  # temporary files of decompressed .tar.gz shards
        stats: dict[str, Any] = {"encoder": self._stats()}
        if queues is not None:
            q = queues.stats
            stats["encoder"]["vae_batches"] = {
                "batches": q.batches,
                "images": q.images,
                "fill": round(q.fill, 4),
                "full_batches": q.full_batches,
                "cap_flushes": q.cap_flushes,
                "shapes": len(q.shapes),
            }
        return stats

    def _write_ready(self, pending: deque[_PendingBatch], queues: Any, out: ShardOutput) -> None:
        """Write the oldest row batches whose latents have all arrived, in their original order."""
        while pending and all(queues.ready(t) for t in pending[0].tags):
            b = pending.popleft()
            results = [queues.pop(t) for t in b.tags]
            rows = self._encode_images(
                b.ok, b.rows, b.failed, [x[0] for x in results], [x[1] for x in results], out
            )
            out.count("encoded", len(rows))
            out.write(rows)

    def _text_rows(self, shard: InputShard) -> dict[str, dict[str, Any]]:
        from recaption.shards.layout import StageDir

        sd = StageDir(self.text_from or "")
        cols = [S.t5_column(f, s) for f in self.fields for s in S.TEXT_SUFFIXES]
        out: dict[str, dict[str, Any]] = {}
        # one file, or several when the text run split its shards by size
        for url in sd.shard_files(shard.index) or [sd.data(shard.index)]:
            t = read_shard_table(InputShard(index=shard.index, uri=url), ["key", *cols])
            out.update((r["key"], r) for r in t.to_pylist())
        return out

    def _encode(
        self,
        ok: list[tuple[dict[str, Any], Any]],
        out: ShardOutput,
        text_rows: dict[str, dict[str, Any]] | None,
    ) -> list[dict[str, Any]]:
        """One row batch encoded at once (text only: the VAE path queues images across batches)."""
        rows, failed = self._encode_text(ok, out, text_rows)
        if self._image_enc is not None:
            images = [v[0] for _, v in ok]
            sizes = [v[1] for _, v in ok]
            per_res = self._image_enc.encode_all(images, sizes)
            square = self._image_enc.encode_all_square(images, sizes)
            rows = self._encode_images(ok, rows, failed, per_res, square, out)
        else:
            rows = [row for i, row in enumerate(rows) if i not in failed]
        out.count("encoded", len(rows))
        return rows

    def _encode_text(
        self,
        ok: list[tuple[dict[str, Any], Any]],
        out: ShardOutput,
        text_rows: dict[str, dict[str, Any]] | None,
    ) -> tuple[list[dict[str, Any]], set[int]]:
        """The rows' reference and T5 columns; the indices whose T5 features failed."""
        rows = [
            {k: r.get(k) for k in ("key", "image_uri", "image_member", "image_offset", "image_length")}
            | {"width": r.get("width"), "height": r.get("height")}
            for r, _ in ok
        ]
        failed: set[int] = set()
        if self._text_enc is not None:
            import numpy as np

            for f in self.fields:
                feats = self._text_enc.encode([r[field_column(f)] for r, _ in ok])
                for i, (row, (r, _), feat) in enumerate(zip(rows, ok, feats, strict=True)):
                    if not np.isfinite(feat.to_float32()).all():
                        if i not in failed:
                            why = f"the {f} caption's T5 features are not finite (NaN or inf): not stored"
                            out.fail(self._failure(r, why))
                        failed.add(i)
                        continue
                    row.update(
                        S.text_row(
                            f, feat.features, text=feat.text, truncated=feat.truncated, dtype=feat.dtype
                        )
                    )
                    if feat.truncated:
                        out.count(f"truncated_{f}")
                        out.fail(
                            self._failure(
                                r,
                                f"{f} caption has {feat.token_count} T5 tokens, over the "
                                f"limit of {self._text_enc.max_length}: truncated",
                                "warning",
                            )
                        )
                    if feat.empty:
                        out.count(f"empty_{f}")
                        out.fail(
                            self._failure(
                                r,
                                f"{f} caption is empty: encoded as the end-of-sequence token alone",
                                "warning",
                            )
                        )
        elif text_rows is not None:
            for row, (r, _) in zip(rows, ok, strict=True):
                src = text_rows[r["key"]]
                row.update({k: v for k, v in src.items() if k.startswith("t5_")})
        return rows, failed

    def _encode_images(
        self,
        ok: list[tuple[dict[str, Any], Any]],
        rows: list[dict[str, Any]],
        failed: set[int],
        per_res_all: list[dict[int, Any]],
        square_all: list[dict[int, Any]],
        out: ShardOutput,
    ) -> list[dict[str, Any]]:
        """Add each row's latents (a failed latent fails its row); the rows that succeeded."""
        for row, (_, (_, (w, h))) in zip(rows, ok, strict=True):
            row["width"], row["height"] = w, h
        for i, (row, per_res) in enumerate(zip(rows, per_res_all, strict=True)):
            errors = [lat.error for lat in per_res.values() if lat.error]
            if errors:
                if i not in failed:
                    out.fail(self._failure(ok[i][0], errors[0]))
                failed.add(i)
                continue
            for lat in per_res.values():
                row.update(lat.row())
        for i, (row, per_res) in enumerate(zip(rows, square_all, strict=True)):
            errors = [lat.error for lat in per_res.values() if getattr(lat, "error", None)]
            if errors:
                if i not in failed:
                    out.fail(self._failure(ok[i][0], errors[0]))
                failed.add(i)
                continue
            for lat in per_res.values():
                row.update(lat.square_row())
        return [row for i, row in enumerate(rows) if i not in failed]

    def _failure(self, r: dict[str, Any], reason: str, severity: str = "error") -> Failure:
        return Failure(
            key=str(r.get("key") or ""),
            stage=self.name,
            reason=reason,
            uri=str(r.get("image_uri") or ""),
            member=str(r.get("image_member") or ""),
            severity=severity,
        )

    def _stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._text_enc is not None:
            out["text"] = json.loads(json.dumps(self._text_enc.stats.__dict__))
        return out
