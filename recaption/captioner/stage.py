"""The caption stage: a source's shards in, caption shards out (one per input shard).

Each output row is one sample: its key and image reference, original size, raw caption, the model
id and revision, and per caption column (``dense_caption``, plus one per extra ``--prompt
COLUMN=...``) the caption, the exact prompt, the number of generated tokens, the finish reason, a
repetition flag, the attempts it took and the error where it failed (also in the failure manifest).
The model loads once per worker in :meth:`CaptionStage.setup`; images are decoded on CPU threads
while the previous batch generates (:meth:`Captioner.caption_stream`).

Several prompts (:mod:`recaption.captioner.captions`): each image is read and decoded **once**;
its prompts go to the model as neighbouring rows of the same batches, and rows with the same image
share one pass through the vision tower (:mod:`recaption.captioner.families.shared_vision`). The
image processor still runs per row (CPU, on the prefetch threads). ``--retry-flagged N`` regenerates a
caption that hit the length limit or was flagged a repetition loop, with seeded sampling (stream
``key/column#retryA``), up to N times, keeping the first clean one, or the last.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from recaption.captioner.captions import (
    DEFAULT_COLUMN,
    CaptionSpec,
    parse_caption_specs,
    schema_fields,
    split_spec,
)
from recaption.captioner.model import FINISH_LENGTH, Captioner, CaptionerConfig, CaptionResult
from recaption.captioner.prompts import PromptTemplate
from recaption.columns import sample_fields, sample_row
from recaption.errors import ConfigError
from recaption.readers.base import Failure, InputShard, Sample, Source
from recaption.shards.writer import ShardOutput
from recaption.stage import Resources, Stage

log = logging.getLogger("recaption")

# Options of the model that change the captions; the others (batch size, threads, compile) only
# change speed, so a resumed run may use other values.
_SEMANTIC = (
    "model",
    "revision",
    "dtype",
    "max_new_tokens",
    "min_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "max_image_pixels",
    "image_aspect",
    "max_prompt_tokens",
    "max_prompt_text_tokens",
    "stop_loops",
    "trust_remote_code",
    "image_options",
)
# How many samples ``--prompt auto`` reads to learn whether a non-SA-1B source has raw captions.
AUTO_PEEK_SAMPLES = 64


def caption_schema(specs: list[CaptionSpec] | None = None) -> Any:
    """The caption shard schema for these caption columns (default: ``dense_caption`` alone)."""
    import pyarrow as pa

    from recaption.captioner.prompts import resolve_prompt

    specs = specs or [CaptionSpec(DEFAULT_COLUMN, resolve_prompt("sam"), "sam")]
    return pa.schema(
        [
            *sample_fields(),
            pa.field("model_id", pa.string()),
            pa.field("model_revision", pa.string()),
            # pad (to a square) | crop (LLaVA-1.5's processor) | native (other families: whole image)
            pa.field("image_aspect", pa.string()),
            *schema_fields(specs),
        ]
    )


def has_raw_captions(source: Source, limit: int = AUTO_PEEK_SAMPLES) -> bool:
    """Whether any of the first ``limit`` samples of ``source`` has a non-empty raw caption."""
    seen = 0
    for item in source.iter_samples():
        if isinstance(item, Failure):
            continue
        if item.caption and str(item.caption).strip():
            return True
        seen += 1
        if seen >= limit:
            break
    return False


def default_prompt_for(source: Source) -> str:
    """PixArt's choice: the raw caption as a hint (``laion``) where the source has raw captions,
    the plain ``sam`` prompt otherwise (SA-1B, or images without captions)."""
    if source.kind == "sam":
        return "sam"
    if has_raw_captions(source):
        return "laion"
    log.info(
        "caption: --prompt auto uses the 'sam' prompt: %s has no raw captions (none in its first %d samples)",
        source.describe(),
        AUTO_PEEK_SAMPLES,
    )
    return "sam"


@dataclass
class _Image:
    """One sample's decoded image, shared by its prompts (decoded by whichever asks first)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    image: Any = None
    error: BaseException | None = None


@dataclass
class _Retry:
    row: dict[str, Any]
    spec: CaptionSpec
    sample: Sample
    image: Any
    prompt: str


@dataclass
class CaptionStage(Stage):
    """Caption every image of ``source`` with a vision-language model, one column per prompt."""

    source: Source
    model: CaptionerConfig = field(default_factory=CaptionerConfig)
    # A preset (sam, laion), a template with {raw_caption}, or auto (sam without raw captions, laion
    # with); several as COLUMN=PRESET_OR_TEMPLATE, one caption column each.
    prompt: str | list[str] = "auto"
    retry_flagged: int = 0
    retry_temperature: float = 0.7
    write_rows: int = 64
    name = "caption"

    def __post_init__(self) -> None:
        if not self.source.has_images:
            raise ConfigError(
                "SOURCE",
                self.source.root,
                "a source with images (SA-1B, webdataset, parquet with image bytes, a folder of images)",
                hint=f"it is a captions-only {self.source.kind!r} source",
            )
        if (
            not isinstance(self.retry_flagged, int)
            or isinstance(self.retry_flagged, bool)
            or self.retry_flagged < 0
        ):
            raise ConfigError("retry_flagged", self.retry_flagged, "an integer >= 0 (0: no retries)")
        if self.retry_flagged and not self.retry_temperature > 0:
            raise ConfigError("retry_temperature", self.retry_temperature, "a number > 0")
        items = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        needs_auto = any(split_spec(i)[1].strip().lower() == "auto" for i in items if isinstance(i, str))
        auto = default_prompt_for(self.source) if needs_auto or not items else None
        self.specs: list[CaptionSpec] = parse_caption_specs(items, auto)
        self._captioner: Captioner | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_captioner"] = None  # never ship a loaded model
        return state

    @property
    def template(self) -> PromptTemplate:
        """The first caption's prompt template."""
        return self.specs[0].template

    @property
    def columns(self) -> list[str]:
        """The caption columns this stage writes."""
        return [s.column for s in self.specs]

    def resources(self) -> Resources:
        dev = self.model.device
        if dev.startswith("cuda"):
            return Resources(num_cpus=1, num_gpus=1)
        if dev == "auto":
            return Resources(num_cpus=1, num_gpus=1, gpu_optional=True)
        return Resources(num_cpus=1)

    def schema(self) -> Any:
        return caption_schema(self.specs)

    def file_metadata(self) -> dict[str, str]:
        # Only what decides the captions: a resumed run with another batch size writes identical files.
        return {"recaption.caption": json.dumps(self.fingerprint(), sort_keys=True)}

    def fingerprint(self) -> dict[str, Any]:
        cfg = self.model.to_dict()
        out: dict[str, Any] = {
            "source": {"kind": self.source.kind, "root": self.source.root},
            "model": {k: cfg[k] for k in _SEMANTIC if not (k == "image_options" and not cfg[k])},
            "prompt": self.template.template,
            "fallback_prompt": self.template.fallback,
        }
        if [s.column for s in self.specs] != [DEFAULT_COLUMN]:
            out["captions"] = [
                {"column": s.column, "prompt": s.template.template, "fallback_prompt": s.template.fallback}
                for s in self.specs
            ]
        if self.retry_flagged:
            out["retry"] = {"flagged": self.retry_flagged, "temperature": self.retry_temperature}
        return out

    def shards(self) -> list[InputShard]:
        return self.source.shards()

    def setup(self) -> None:
        self._captioner = Captioner(self.model).load()

    def teardown(self) -> None:
        if self._captioner is not None:
            self._captioner.unload()
            self._captioner = None

    def process_shard(self, shard: InputShard, out: ShardOutput) -> dict[str, Any]:
        if self._captioner is None:
            self.setup()
        cap = self._captioner
        assert cap is not None
        k = len(self.specs)
        # The reader runs on the prefetch thread: it only appends here; the main thread records.
        read_failures: list[Failure] = []
        rendered: dict[int, list[Any]] = {}
        images: dict[int, _Image] = {}

        def items() -> Any:
            for s in self.source.read_shard(shard):
                if isinstance(s, Failure):
                    read_failures.append(s)
                    continue
                rendered[id(s)] = [spec.template.render(s.caption) for spec in self.specs]
                images[id(s)] = _Image()
                for j in range(k):
                    yield s, j

        def load_item(item: tuple[Sample, int]) -> tuple[Any, str]:
            s, j = item
            entry = images[id(s)]
            with entry.lock:  # the first of the sample's prompts decodes; the others reuse it
                if entry.image is None and entry.error is None:
                    try:
                        decoded = cap.decode(s.image_bytes())
                        s.width, s.height = decoded.width, decoded.height
                        entry.image = decoded.image
                    except Exception as e:
                        entry.error = e
                    s.data = None  # the bytes are not needed any more: keep memory bounded
            if entry.error is not None:
                raise entry.error
            return entry.image, rendered[id(s)][j].text

        def seed_key(item: tuple[Sample, int]) -> str:
            return self.specs[item[1]].seed_key(item[0].key)

        rows: list[dict[str, Any]] = []
        retries: list[_Retry] = []
        results: list[CaptionResult] = []
        stats_before = (cap.stats.batches, cap.stats.oom_splits, cap.stats.generate_s)
        for (s, j), res in cap.caption_stream(items(), load_item, key=seed_key):
            results.append(res)
            if j < k - 1:
                continue
            self._drain(read_failures, out)
            entry = images.pop(id(s))
            row = self._row(s, results, rendered.pop(id(s)), out)
            results = []
            rows.append(row)
            out.progress(1)
            if self.retry_flagged:
                retries += [
                    _Retry(row, spec, s, entry.image, row[spec.meta("prompt")])
                    for spec in self.specs
                    if _flags(row, spec)
                ]
            if len(rows) >= self.write_rows:
                self._retry(retries, out)
                out.write(rows)
                rows, retries = [], []
        self._drain(read_failures, out)
        self._retry(retries, out)
        out.write(rows)
        return {
            "captioner": {
                "batches": cap.stats.batches - stats_before[0],
                "oom_splits": cap.stats.oom_splits - stats_before[1],
                "generate_seconds": round(cap.stats.generate_s - stats_before[2], 3),
                "batch_size": cap.batch_size,
                "model_id": cap.model_id,
                "revision": cap.revision,
            }
        }

    @staticmethod
    def _drain(failures: list[Failure], out: ShardOutput) -> None:
        while failures:
            out.fail(failures.pop(0))

    def _reason(self, spec: CaptionSpec, reason: str) -> str:
        """A manifest reason about one caption column: the column named last, in parentheses.

        Not as a ``column: `` prefix: summaries group reasons by the text before the first colon
        (:func:`recaption.shards.manifest.reason_category`), which would make the column name the
        group ("6 × short_caption") instead of what happened."""
        return reason if len(self.specs) == 1 else f"{reason} (caption column {spec.column})"

    def _count(self, out: ShardOutput, spec: CaptionSpec, name: str, n: int = 1) -> None:
        # dense_caption's counters keep their names; another column's are prefixed with it
        out.count(name if spec.column == DEFAULT_COLUMN else f"{spec.column}.{name}", n)

    def _row(
        self, s: Sample, results: list[CaptionResult], prompts: list[Any], out: ShardOutput
    ) -> dict[str, Any]:
        for w in s.warnings:
            out.warn_sample(s, w)
        row = sample_row(s)
        cap = self._captioner
        model_id = next((r.model_id for r in results if r.model_id), cap.model_id if cap else None)
        revision = next((r.revision for r in results if r.revision), cap.revision if cap else None)
        row.update(model_id=model_id, model_revision=revision, image_aspect=cap.image_aspect if cap else None)
        errors = [r.error for r in results if r.error is not None]
        if errors and len(set(errors)) == 1 and len(errors) == len(results):
            out.fail_sample(s, errors[0])  # one manifest row when the image itself failed
        for spec, res, rendered in zip(self.specs, results, prompts, strict=True):
            if rendered.fallback:
                out.warn_sample(s, self._reason(spec, rendered.reason))
                self._count(out, spec, "prompt_fallback")
            ok = res.error is None
            if not ok and not (len(set(errors)) == 1 and len(errors) == len(results)):
                out.fail_sample(s, self._reason(spec, str(res.error)))
            if not ok:
                self._count(out, spec, "failed")  # per column: the stage's errors count images
            row[spec.meta("prompt")] = rendered.text
            row[spec.meta("prompt_name")] = spec.template.name if not rendered.fallback else "sam"
            row[spec.meta("prompt_fallback")] = rendered.fallback
            row[spec.meta("attempts")] = 1
            row[spec.meta("retry_reason")] = None
            self._fill(row, spec, res)
            if ok:
                self._count(out, spec, "captioned")
                self._count_flags(out, spec, res)
        return row

    def _count_flags(
        self, out: ShardOutput, spec: CaptionSpec, res: CaptionResult, tokens: bool = True
    ) -> None:
        if tokens:
            self._count(out, spec, "generated_tokens", res.num_tokens)
        if res.finish_reason == FINISH_LENGTH:
            self._count(out, spec, "length_limited")
        if res.repetition:
            self._count(out, spec, "repetitive")

    @staticmethod
    def _fill(row: dict[str, Any], spec: CaptionSpec, res: CaptionResult) -> None:
        ok = res.error is None
        row[spec.column] = res.text if ok else None
        row[spec.meta("num_tokens")] = res.num_tokens if ok else 0
        row[spec.meta("finish_reason")] = res.finish_reason
        row[spec.meta("repetition")] = bool(res.repetition) if ok else False
        row[spec.meta("repetition_score")] = float(res.repetition_score) if ok else 0.0
        row[spec.meta("error")] = None if ok else res.error

    def _retry(self, pending: list[_Retry], out: ShardOutput) -> None:
        """Regenerate flagged captions with seeded sampling until clean or ``retry_flagged`` attempts."""
        if not pending:
            return
        cap = self._captioner
        assert cap is not None
        config = dataclasses.replace(
            cap.config, do_sample=True, temperature=self.retry_temperature, batch_size=cap.batch_size
        )
        sampler = Captioner.from_model(
            cap.model, cap.processor, config, model_id=cap.model_id, revision=cap.revision
        )
        for p in pending:
            p.row[p.spec.meta("retry_reason")] = _flags(p.row, p.spec)
            self._count(out, p.spec, "retried")
        todo = pending
        for attempt in range(1, self.retry_flagged + 1):
            results = sampler.caption(
                [p.image for p in todo],
                [p.prompt for p in todo],
                [f"{p.spec.seed_key(p.sample.key)}#retry{attempt}" for p in todo],
            )
            still = []
            for p, res in zip(todo, results, strict=True):
                if res.error is not None:  # keep the flagged caption rather than none
                    out.warn_sample(p.sample, self._reason(p.spec, f"retry {attempt} failed: {res.error}"))
                    continue
                self._fill(p.row, p.spec, res)
                self._count(out, p.spec, "generated_tokens", res.num_tokens)
                p.row[p.spec.meta("attempts")] = attempt + 1
                if _flags(p.row, p.spec):
                    still.append(p)
            todo = still
            if not todo:
                break
        for p in pending:
            flagged = bool(_flags(p.row, p.spec))
            self._count(out, p.spec, "retry_still_flagged" if flagged else "retry_fixed")
            if p.row[p.spec.meta("error")] is None:
                # the counters describe the kept caption
                self._count_flags(out, p.spec, _as_result(p.row, p.spec), tokens=False)
        # the first attempt's flags were counted in _row; the kept caption's replace them
        for p in pending:
            self._uncount_first(out, p)

    def _uncount_first(self, out: ShardOutput, p: _Retry) -> None:
        first = p.row[p.spec.meta("retry_reason")] or ""
        if "length" in first:
            self._count(out, p.spec, "length_limited", -1)
        if "repetition" in first:
            self._count(out, p.spec, "repetitive", -1)


def _flags(row: dict[str, Any], spec: CaptionSpec) -> str:
    """Why a caption would be retried: ``length``, ``repetition``, ``length+repetition``, or ``""``."""
    if row.get(spec.meta("error")) is not None:
        return ""
    reasons = []
    if row.get(spec.meta("finish_reason")) == FINISH_LENGTH:
        reasons.append("length")
    if row.get(spec.meta("repetition")):
        reasons.append("repetition")
    return "+".join(reasons)


def _as_result(row: dict[str, Any], spec: CaptionSpec) -> CaptionResult:
    return CaptionResult(
        text=row[spec.column] or "",
        num_tokens=row[spec.meta("num_tokens")],
        finish_reason=row[spec.meta("finish_reason")],
        repetition=row[spec.meta("repetition")],
        repetition_score=row[spec.meta("repetition_score")],
        model_id="",
        revision="",
    )
