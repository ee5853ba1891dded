"""The caption stage: a source's shards in, caption shards out (one per input shard).

Each output row is one sample: its key and image reference, original size, raw caption, the dense
caption, the exact prompt, the model id and revision, the number of generated tokens, the finish
reason, a repetition flag, and the error where the sample failed (also in the failure manifest).
The model loads once per worker in :meth:`CaptionStage.setup`; images are decoded on CPU threads
while the previous batch generates (:meth:`Captioner.caption_stream`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from recaption.captioner.model import FINISH_LENGTH, Captioner, CaptionerConfig, CaptionResult
from recaption.captioner.prompts import PromptTemplate, resolve_prompt
from recaption.columns import sample_fields, sample_row
from recaption.readers.base import Failure, InputShard, Sample, Source
from recaption.shards.writer import ShardOutput
from recaption.stage import Resources, Stage

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
    "trust_remote_code",
    "image_options",
)


def caption_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            *sample_fields(),
            pa.field("dense_caption", pa.string()),
            pa.field("prompt", pa.string()),  # the exact instruction text given to the model
            pa.field("prompt_name", pa.string()),  # sam | laion | custom
            pa.field("prompt_fallback", pa.bool_()),  # the raw caption was empty: fallback prompt used
            pa.field("model_id", pa.string()),
            pa.field("model_revision", pa.string()),
            pa.field("num_tokens", pa.int32()),  # generated tokens, end-of-sequence included
            pa.field("finish_reason", pa.string()),  # stop | length | error
            pa.field("repetition", pa.bool_()),  # degenerate repetition detected
            pa.field("repetition_score", pa.float32()),
            pa.field("error", pa.string()),  # why the sample has no caption
        ]
    )


def default_prompt_for(source: Source) -> str:
    """PixArt's choice: SAM images get the plain prompt, web images their alt-text as a hint."""
    return "sam" if source.kind == "sam" else "laion"


@dataclass
class CaptionStage(Stage):
    """Caption every image of ``source`` with a vision-language model."""

    source: Source
    model: CaptionerConfig = field(default_factory=CaptionerConfig)
    prompt: str = "auto"  # a preset (sam, laion) or a template with {raw_caption}; auto: by source kind
    write_rows: int = 64
    name = "caption"

    def __post_init__(self) -> None:
        if not self.source.has_images:
            from recaption.errors import ConfigError

            raise ConfigError(
                "SOURCE",
                self.source.root,
                "a source with images (SA-1B, webdataset, parquet with image bytes, a folder of images)",
                hint=f"it is a captions-only {self.source.kind!r} source",
            )
        self._template: PromptTemplate = resolve_prompt(
            default_prompt_for(self.source) if self.prompt == "auto" else self.prompt
        )
        self._captioner: Captioner | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_captioner"] = None  # never ship a loaded model
        return state

    @property
    def template(self) -> PromptTemplate:
        return self._template

    def resources(self) -> Resources:
        dev = self.model.device
        if dev.startswith("cuda"):
            return Resources(num_cpus=1, num_gpus=1)
        if dev == "auto":
            return Resources(num_cpus=1, num_gpus=1, gpu_optional=True)
        return Resources(num_cpus=1)

    def schema(self) -> Any:
        return caption_schema()

    def file_metadata(self) -> dict[str, str]:
        # Only what decides the captions: a resumed run with another batch size writes identical files.
        return {"recaption.caption": json.dumps(self.fingerprint(), sort_keys=True)}

    def fingerprint(self) -> dict[str, Any]:
        cfg = self.model.to_dict()
        return {
            "source": {"kind": self.source.kind, "root": self.source.root},
            "model": {k: cfg[k] for k in _SEMANTIC},
            "prompt": self._template.template,
            "fallback_prompt": self._template.fallback,
        }

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
        # The reader runs on the prefetch thread: it only appends here; the main thread records.
        read_failures: list[Failure] = []
        prompts: dict[int, Any] = {}

        def samples() -> Any:
            for item in self.source.read_shard(shard):
                if isinstance(item, Failure):
                    read_failures.append(item)
                    continue
                prompts[id(item)] = self._template.render(item.caption)
                yield item

        def load_item(s: Sample) -> tuple[Any, str]:
            decoded = cap.decode(s.image_bytes())
            s.width, s.height = decoded.width, decoded.height
            s.data = None  # the bytes are not needed any more: keep memory bounded
            return decoded.image, prompts[id(s)].text

        rows: list[dict[str, Any]] = []
        stats_before = (cap.stats.batches, cap.stats.oom_splits, cap.stats.generate_s)
        for s, res in cap.caption_stream(samples(), load_item, key=lambda s: s.key):
            self._drain(read_failures, out)
            rows.append(self._row(s, res, prompts.pop(id(s)), out))
            out.progress(1)
            if len(rows) >= self.write_rows:
                out.write(rows)
                rows = []
        self._drain(read_failures, out)
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

    def _row(self, s: Sample, res: CaptionResult, rendered: Any, out: ShardOutput) -> dict[str, Any]:
        for w in s.warnings:
            out.warn_sample(s, w)
        if rendered.fallback:
            out.warn_sample(s, rendered.reason)
            out.count("prompt_fallback")
        row = sample_row(s)
        ok = res.error is None
        if ok:
            out.count("captioned")
            out.count("generated_tokens", res.num_tokens)
            if res.finish_reason == FINISH_LENGTH:
                out.count("length_limited")
            if res.repetition:
                out.count("repetitive")
        else:
            out.fail_sample(s, res.error or "unknown error")
        row.update(
            dense_caption=res.text if ok else None,
            prompt=rendered.text,
            prompt_name=self._template.name if not rendered.fallback else "sam",
            prompt_fallback=rendered.fallback,
            model_id=res.model_id or (self._captioner.model_id if self._captioner else None),
            model_revision=res.revision or (self._captioner.revision if self._captioner else None),
            num_tokens=res.num_tokens if ok else 0,
            finish_reason=res.finish_reason,
            repetition=bool(res.repetition) if ok else False,
            repetition_score=float(res.repetition_score) if ok else 0.0,
            error=None if ok else res.error,
        )
        return row
