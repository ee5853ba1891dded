"""The nouns stage: caption columns (or captions-only sources) in, nouns per caption and
mergeable per-shard statistics out; :func:`merge_reports` turns them into PixArt's Table 1.

Inputs are compared side by side, each under a label: the ``raw_caption`` and ``dense_caption``
columns of one caption run, or several datasets (a LAION metadata parquet, a folder of PixArt's
``sa_<id>.txt`` captions, JSON lines...). Shard ``i`` of the output is one input shard; its rows
carry the key and, per label, the nouns found and the caption's counts. Statistics are counted per
shard (``_counts/part-i.json``, per label) and merged exactly afterwards, so the result does not
depend on the number of workers or on the sharding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from recaption import io
from recaption.errors import ConfigError, MissingColumnsError, SourceError
from recaption.nouns.counter import NounCounter, noun_fields
from recaption.nouns.options import NounOptions
from recaption.nouns.stats import NounStats
from recaption.readers.base import Failure, InputShard, Sample
from recaption.shards.inputs import read_shard_table, stage_output_shards
from recaption.shards.layout import PART_RE, StageDir
from recaption.shards.writer import ShardOutput
from recaption.stage import Resources, Stage

# 2: a caption run's columns are counted over the same images (captioning failures in neither)
COUNTING_RULES = 2
_ERROR = "\0error"  # the caption stage's error column, kept beside the compared columns
DEFAULT_LABELS = {"raw_caption": "raw", "dense_caption": "dense"}


@dataclass(frozen=True)
class NounInput:
    """One input: a caption-stage output (``columns`` of it), or any captions source (``caption``)."""

    url: str
    columns: tuple[tuple[str, str], ...]  # (column, label); for sources the column is "caption"
    is_stage_output: bool = True
    text_column: str | None = None  # sources: the table's caption column
    shard_size: int | None = None  # sources: captions per shard (large tables, loose files)
    expected_shards: tuple[int, ...] | None = None  # pipeline: the upstream's shard indices

    @property
    def labels(self) -> list[str]:
        return [label for _, label in self.columns]


def make_inputs(
    urls: list[str],
    labels: list[str] | None,
    columns: list[str] | None,
    text_columns: list[str] | None = None,
    shard_size: int | None = None,
) -> list[NounInput]:
    """Inputs from CLI-style arguments: each URL is a caption-stage output or a captions source.

    A caption-stage output contributes ``columns`` (default raw and dense captions); any other
    source contributes its captions. ``labels`` name the resulting columns in order.
    """
    from recaption.shards.inputs import upstream_stage

    inputs: list[tuple[str, list[str], bool]] = []
    for url in urls:
        if io.exists(StageDir(url).stage_file):
            stage = upstream_stage(url)
            cols = list(
                columns or (["raw_caption", "dense_caption"] if stage == "caption" else ["raw_caption"])
            )
            if stage == "caption":
                # a column the run has not got fails here, not as every shard's failure
                from recaption.shards.inputs import caption_run_columns

                have = caption_run_columns(url)
                for c in cols:
                    if c not in have:
                        raise ConfigError("--column", c, f"a caption column of {url}: {', '.join(have)}")
            inputs.append((url, cols, True))
        else:
            inputs.append((url, ["caption"], False))
    if columns and not any(is_stage for _, _, is_stage in inputs):
        raise ConfigError(
            "--column",
            columns,
            "only with caption-stage outputs (recaption caption's folders)",
            hint="for tables use --text-column",
        )
    if text_columns and len(text_columns) not in (1, len(urls)):
        raise ConfigError(
            "--text-column", text_columns, f"one column for all inputs, or {len(urls)} (one per input)"
        )
    per_input = (
        (text_columns * len(urls) if len(text_columns) == 1 else text_columns) if text_columns else None
    )
    n = sum(len(c) for _, c, _ in inputs)
    if labels and len(labels) != n:
        raise ConfigError("--label", labels, f"{n} labels, one per compared caption column, in order")
    out, k = [], 0
    used: set[str] = set()
    applied = False
    for n_input, (url, cols, is_stage) in enumerate(inputs):
        pairs = []
        for c in cols:
            label = (
                labels[k]
                if labels
                else (DEFAULT_LABELS.get(c, c) if is_stage else io.basename(url).split(".")[0])
            )
            k += 1
            if label in used:
                raise ConfigError("--label", label, "a distinct label per compared column")
            used.add(label)
            pairs.append((c, label))
        tc = per_input[n_input] if per_input and not is_stage else None
        if tc and text_columns and len(text_columns) == 1 and not _is_table(url, shard_size):
            # "once for all inputs" names the column of the tables; a folder or a webdataset
            # takes its captions from its own files
            tc = None
        else:
            applied = applied or bool(tc)
        out.append(
            NounInput(
                url=url,
                columns=tuple(pairs),
                is_stage_output=is_stage,
                text_column=tc or None,
                shard_size=shard_size,
            )
        )
    if text_columns and any(text_columns) and not applied:
        raise ConfigError(
            "--text-column",
            text_columns,
            "only with table inputs (parquet, JSON lines, CSV)",
            hint="no input is a table; the others take their captions from their own files",
        )
    return out


def _is_table(url: str, shard_size: int | None) -> bool:
    from recaption.readers import open_source
    from recaption.readers.table import TableSource

    try:
        return isinstance(open_source(url, shard_size=shard_size), TableSource)
    except (ConfigError, MissingColumnsError):
        return True  # a table without a default caption column: it needs the option
    except SourceError:
        return False  # reported when the stage opens it


def label_column(label: str) -> str:
    """The prefix of a label's columns in the output shards (labels may hold spaces)."""
    safe = "".join(ch if ch.isalnum() else "_" for ch in label).strip("_").lower() or "captions"
    return f"{safe}_"


@dataclass
class NounsStage(Stage):
    """Nouns per caption and Table 1 statistics for every labelled input."""

    inputs: list[NounInput]
    options: NounOptions = field(default_factory=NounOptions)
    name = "nouns"

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("INPUT", "", "at least one caption folder or captions source")
        self._counter: NounCounter | None = None
        self._sources: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_counter=None, _sources={})
        return state

    def resources(self) -> Resources:
        return Resources(num_cpus=1)

    @property
    def labels(self) -> list[str]:
        return [label for inp in self.inputs for label in inp.labels]

    def schema(self) -> Any:
        import pyarrow as pa

        fields_ = [pa.field("key", pa.string()), pa.field("input", pa.string())]
        for label in self.labels:
            fields_.append(pa.field(f"{label_column(label)}caption", pa.string()))
            fields_ += noun_fields(label_column(label))
        return pa.schema(fields_)

    def file_metadata(self) -> dict[str, str]:
        return {"recaption.nouns": json.dumps({"labels": self.labels, "options": self.options.fingerprint()})}

    def fingerprint(self) -> dict[str, Any]:
        return {
            "inputs": [
                {"url": i.url, "columns": [list(c) for c in i.columns], "text_column": i.text_column}
                for i in self.inputs
            ],
            "options": self.options.fingerprint(),
            # what the stage does beyond the options: bump when a change alters finished shards
            "rules": COUNTING_RULES,
        }

    def _source(self, j: int) -> Any:
        if j not in self._sources:
            from recaption.readers import open_source

            inp = self.inputs[j]
            self._sources[j] = open_source(inp.url, text_column=inp.text_column, shard_size=inp.shard_size)
        return self._sources[j]

    def shards(self) -> list[InputShard]:
        out: list[InputShard] = []
        offset = 0
        for j, inp in enumerate(self.inputs):
            if inp.is_stage_output:
                local = stage_output_shards(inp.url, inp.expected_shards)
            else:
                local = self._source(j).shards()
            for s in local:
                # Output shard i of the first input is its input shard i (a pipeline streams on that);
                # later inputs follow. ``kind`` keeps "<input>:<local index>" for the worker.
                out.append(
                    InputShard(
                        index=offset + s.index,
                        uri=s.uri,
                        files=s.files,
                        start=s.start,
                        stop=s.stop,
                        kind=f"{j}:{s.index}",
                    )
                )
            offset += max((s.index for s in local), default=-1) + 1
        return out

    def setup(self) -> None:
        if self._counter is None:
            from recaption.nouns.parallel import set_blas_threads

            set_blas_threads(1)  # one core per worker: BLAS threads would fight the other workers
            self._counter = NounCounter(self.options).load()

    def process_shard(self, shard: InputShard, out: ShardOutput) -> dict[str, Any]:
        self.setup()
        assert self._counter is not None
        j_text, local_text = shard.kind.split(":", 1)
        j, local = int(j_text), int(local_text)
        inp = self.inputs[j]
        keys, texts = self._read(inp, j, shard, local, out)
        # The input by name, not full path: a run moved or redone elsewhere writes identical shards.
        name = io.basename(inp.url)
        rows: list[dict[str, Any]] = [{"key": k, "input": name} for k in keys]
        counts: dict[str, str] = {}
        for column, label in inp.columns:
            stats = NounStats.for_options(self._counter.fingerprint())
            prefix = label_column(label)
            values = texts[column]
            if inp.is_stage_output:
                # Every column over the same images. An image whose captioning failed is not in the
                # recaptioned set: it is left out of every column (its row stays, without counts; its
                # manifest row is the caption stage's). A missing caption (no alt-text) is an empty
                # one, with no nouns, rather than an image left out of that column alone.
                present = [i for i, e in enumerate(texts[_ERROR]) if not e]
            else:
                present = [i for i, t in enumerate(values) if t is not None]
            out.count(f"missing_{label}", sum(1 for t in values if t is None))
            counted = (values[i] if values[i] is not None else "" for i in present)
            for i, res in zip(present, self._counter.iter_count(counted), strict=True):
                stats.add(res)
                rows[i][f"{prefix}caption"] = values[i] if isinstance(values[i], str) else None
                rows[i].update(res.to_row(prefix))
                if res.truncated:
                    out.fail(
                        Failure(
                            key=keys[i],
                            stage=self.name,
                            severity="warning",
                            uri=inp.url,
                            reason=f"{label} caption is {res.n_chars} characters, over max_chars "
                            f"({self.options.max_chars}): counted up to there",
                        )
                    )
            counts[label] = stats.to_json()
            out.count(f"captions_{label}", stats.captions)
            out.count(f"nouns_{label}", stats.total_nouns)
        out.side_text("counts", json.dumps(counts, sort_keys=True, ensure_ascii=False))
        out.write(rows)
        return {"input": inp.url, "labels": inp.labels}

    def _read(
        self, inp: NounInput, j: int, shard: InputShard, local: int, out: ShardOutput
    ) -> tuple[list[str], dict[str, list[Any]]]:
        if inp.is_stage_output:
            cols = [c for c, _ in inp.columns]
            table = read_shard_table(
                InputShard(index=local, uri=shard.uri), ["key", *cols], optional=["error"]
            )
            data = table.to_pydict()
            errors = data.get("error") or [None] * table.num_rows
            out.count("captioning_failed", sum(1 for e in errors if e))
            return [str(k) for k in data["key"]], {**{c: data[c] for c in cols}, _ERROR: errors}
        src = self._source(j)
        local_shard = InputShard(
            index=local, uri=shard.uri, files=shard.files, start=shard.start, stop=shard.stop, kind=src.kind
        )
        keys: list[str] = []
        captions: list[Any] = []
        for item in src.read_shard(local_shard):
            if isinstance(item, Failure):
                out.fail(item)
                continue
            s: Sample = item
            for w in s.warnings:
                out.warn_sample(s, w)
            keys.append(s.key)
            captions.append(s.caption)
        return keys, {"caption": captions}


def merge_counts(stage_url: str) -> dict[str, NounStats]:
    """Merge every finished shard's statistics, per label (exact, order-independent)."""
    folder = io.join(stage_url, "_counts")
    parts: dict[str, list[NounStats]] = {}
    done = StageDir(stage_url).done_indices()  # only shards whose stats marker says complete
    for url in io.listdir(folder):
        if not url.endswith(".json") or io.is_tmp(url):
            continue
        m = PART_RE.match(io.basename(url))
        if m is None or int(m.group(1)) not in done:
            continue
        for label, text in json.loads(io.read_text(url)).items():
            parts.setdefault(label, []).append(NounStats.from_json(text))
    record = json.loads(io.read_text(StageDir(stage_url).stage_file))
    order = [label for i in record["fingerprint"]["inputs"] for _, label in i["columns"]]
    return {label: NounStats.merge_all(parts[label]) for label in order if label in parts}


def merge_reports(
    stage_url: str, threshold: float = 10, top_k: int = 25, report_dir: str | None = None
) -> tuple[dict[str, str], dict[str, Any]]:
    """Write ``nouns.json``, ``nouns.md`` (Table 1) and ``nouns.csv`` for a nouns output folder.

    They go to ``report_dir``, by default ``<stage_url>/_report`` (the leading ``_`` keeps them out
    of ``pandas.read_parquet(stage_url)``).
    """
    from recaption.nouns.report import build_report, write_reports

    stats = merge_counts(stage_url)
    if not stats:
        raise ConfigError("nouns output", stage_url, "a folder with finished nouns shards (_counts/)")
    record = json.loads(io.read_text(StageDir(stage_url).stage_file))
    sources = {label: i["url"] for i in record["fingerprint"]["inputs"] for _, label in i["columns"]}
    out_dir = report_dir or io.join(stage_url, "_report")
    urls = write_reports(stats, out_dir, threshold=threshold, top_k=top_k, sources=sources)
    return urls, build_report(stats, threshold=threshold, top_k=top_k, sources=sources)
