"""``recaption run``: caption → nouns → encode over one source into one output folder.

::

    OUTPUT/
      pipeline.yaml     the resolved configuration (a rerun with other results-deciding settings is refused)
      captions/         caption shards (part-NNNNN.parquet, _failures/, _stats/)
      nouns/            nouns per caption and per-shard statistics
      report/           nouns.{json,md,csv}: PixArt's Table 1, raw against dense captions;
                        index.html: the whole run on one page (`recaption report`)
      features/         T5 + VAE feature shards (features_text/ too when T5 and VAE run apart)
      _lease.json       while a run writes here: a second run on the folder is refused
      .huggingface.yaml `datasets.load_dataset(OUTPUT)`: the caption shards (config "nouns",
                        "features"...: that stage's)
      summary.json      what this invocation did per stage (throughput, failures by reason), and
                        "totals": the whole output's, over every run into the folder

With the Ray executor the stages overlap: caption shard ``i`` goes to nouns and encode as soon as
it is committed, while the captioner works on the next. The local executor runs them one after
another in this process.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from recaption import __version__, io
from recaption.errors import ConfigError
from recaption.pipeline import build
from recaption.pipeline.config import PipelineConfig, semantic
from recaption.runner.base import OutputConflictError, RunSummary, log
from recaption.stage import Resources, Stage


@dataclass
class PlannedStage:
    stage: Stage
    output: str
    after: str | None
    workers: int | None
    resources: Resources | None


@dataclass
class Plan:
    config: PipelineConfig
    stages: dict[str, PlannedStage] = field(default_factory=dict)
    captions: str = ""
    nouns: str = ""
    features: str = ""
    features_text: str = ""  # T5 features, when T5 and the VAE run on different workers


def _resources(stage: Stage, cpus: float, gpus: float) -> Resources:
    base = stage.resources()
    return Resources(
        num_cpus=cpus,
        num_gpus=gpus if base.num_gpus > 0 else 0.0,
        memory_bytes=base.memory_bytes,
        gpu_optional=base.gpu_optional,
    )


def plan(cfg: PipelineConfig) -> Plan:
    """The stages of a run, wired shard by shard (nothing is loaded or run)."""
    from recaption.readers import open_source
    from recaption.shards.layout import StageDir

    out = cfg.output
    p = Plan(
        config=cfg,
        captions=io.join(out, "captions"),
        nouns=io.join(out, "nouns"),
        features=io.join(out, "features"),
        features_text=io.join(out, "features_text"),
    )
    expected: tuple[int, ...] | None = None
    if cfg.caption.enabled:
        c = cfg.caption
        src = open_source(
            cfg.source.path,
            kind=cfg.source.kind,
            shard_size=cfg.source.shard_size,
            captions_dir=cfg.source.captions_dir,
            text_column=cfg.source.text_column,
            image_column=cfg.source.image_column,
        )
        with build.in_section("caption"):
            stage = build.caption_stage(c, src)
        expected = tuple(s.index for s in src.shards())
        p.stages["caption"] = PlannedStage(
            stage, p.captions, None, c.workers, _resources(stage, c.cpus_per_worker, c.gpus_per_worker)
        )
    elif not io.exists(StageDir(p.captions).stage_file):
        raise ConfigError(
            "caption.enabled",
            False,
            "true, or an existing OUTPUT/captions from an earlier run",
            hint=f"{p.captions} holds no caption shards",
        )
    if cfg.nouns.enabled:
        from recaption.nouns.stage import DEFAULT_LABELS, NounInput, NounsStage

        n = cfg.nouns
        labels = n.labels or [DEFAULT_LABELS.get(col, col) for col in n.columns]
        if len(labels) != len(n.columns):
            raise ConfigError(
                "nouns.labels", labels, f"{len(n.columns)} labels, one per column of nouns.columns"
            )
        caption_stage = p.stages["caption"].stage if "caption" in p.stages else None
        _check_caption_columns(p.captions, list(n.columns), captioning=caption_stage)
        with build.in_section("nouns"):
            options = build.noun_options(n)
        stage_n = NounsStage(
            inputs=[
                NounInput(
                    url=p.captions,
                    columns=tuple(zip(n.columns, labels, strict=True)),
                    expected_shards=expected,
                )
            ],
            options=options,
        )
        p.stages["nouns"] = PlannedStage(
            stage_n,
            p.nouns,
            "caption" if expected is not None else None,
            n.workers,
            Resources(num_cpus=n.cpus_per_worker),
        )
    if cfg.encode.enabled:
        e = cfg.encode
        after = "caption" if expected is not None else None
        if "caption" in p.stages:
            _check_encode_fields(list(e.fields), p.stages["caption"].stage)
        if e.split_workers:
            text_url = p.features_text
            with build.in_section("encode"):
                st = build.encode_stage(e, p.captions, what="text", expected_shards=expected)
                si = build.encode_stage(
                    e, p.captions, what="image", text_from=text_url, expected_shards=expected
                )
            p.stages["encode_text"] = PlannedStage(
                st, text_url, after, e.workers, _resources(st, e.cpus_per_worker, e.gpus_per_worker)
            )
            p.stages["encode"] = PlannedStage(
                si, p.features, "encode_text", e.workers, _resources(si, e.cpus_per_worker, e.gpus_per_worker)
            )
        else:
            with build.in_section("encode"):
                s = build.encode_stage(e, p.captions, expected_shards=expected)
            p.stages["encode"] = PlannedStage(
                s, p.features, after, e.workers, _resources(s, e.cpus_per_worker, e.gpus_per_worker)
            )
    if not p.stages:
        raise ConfigError("caption/nouns/encode.enabled", False, "at least one stage enabled")
    return p


def _check_encode_fields(fields: list[str], caption_stage: Any) -> None:
    """``encode.fields`` naming a caption column must name one this run's captioning writes."""
    from recaption.encoder.stage import FIELD_COLUMNS

    available = list(caption_stage.schema().names)
    for f in fields:
        if f not in FIELD_COLUMNS and f not in available:
            columns = sorted(c for c in available if c.endswith("caption"))
            raise ConfigError("encode.fields", f, ["dense", "raw", *columns])


def _check_caption_columns(captions: str, columns: list[str], *, captioning: Any) -> None:
    """``nouns.columns`` must name columns the caption shards have: checked before any captioning,
    not found out by every noun shard after it. ``captioning``: the caption stage of this run, if any
    (its schema has one column per prompt)."""
    if captioning is not None:
        available = list(captioning.schema().names)
    else:
        from recaption.shards.layout import StageDir

        files = StageDir(captions).data_files()
        if not files:
            return  # the nouns stage reports an empty or missing folder itself
        import pyarrow.parquet as pq

        with io.open_file(files[0], "rb") as f:
            available = list(pq.ParquetFile(f).schema_arrow.names)
    missing = [c for c in columns if c not in available]
    if missing:
        # the caption columns (raw and one per prompt), not their metadata (short_caption_attempts...)
        if captioning is not None:
            accepted = ["raw_caption", *(s.column for s in captioning.specs)]
        else:
            from recaption.shards.inputs import caption_run_columns

            accepted = caption_run_columns(captions)
        raise ConfigError("nouns.columns", missing, accepted)


def check_or_record_config(p: Plan) -> None:
    """Write OUTPUT/pipeline.yaml; on a rerun, refuse settings that would change finished results.

    A changed setting is refused only where its stage already has finished shards (a source or
    caption setting: the captions; ``nouns.*``: the noun shards; ``encode.*``: the features), so a
    first try that failed before finishing a stage can be corrected and run again. Call it after
    :func:`plan` has accepted the settings, so a rejected setting is never recorded.
    """
    import yaml

    from recaption.pipeline.config import section_of
    from recaption.shards.layout import StageDir

    cfg = p.config
    url = io.join(cfg.output, "pipeline.yaml")
    new = cfg.model_dump(mode="json")
    if io.exists(url):
        from recaption.pipeline.config import load_config

        old_raw = yaml.safe_load(io.read_text(url)) or {}
        old_raw.pop("recaption_version", None)
        old = load_config(old_raw)
        a, b = semantic(old), semantic(cfg)
        folders = {"caption": [p.captions], "nouns": [p.nouns], "encode": [p.features, p.features_text]}
        started = {
            name: any(StageDir(u).done_indices() for u in urls if io.exists(u))
            for name, urls in folders.items()
        }
        changed = [
            f"{k}: {a.get(k)!r} → {b.get(k)!r}"
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and started.get(section_of(k), True)
        ]
        if changed:
            raise OutputConflictError(
                f"{cfg.output} holds a run with other settings; refusing to mix outputs. Changed: "
                + "; ".join(changed)
                + ". Use a new output folder (settings of speed and placement, like workers and batch sizes, "
                "may change on a rerun)."
            )
    io.makedirs(cfg.output)
    io.write_text_atomic(url, yaml.safe_dump({**new, "recaption_version": __version__}, sort_keys=False))


@dataclass
class PipelineResult:
    summaries: dict[str, RunSummary]
    seconds: float
    report: dict[str, Any] | None
    report_files: dict[str, str]
    output: str
    html_report: str | None = None  # OUTPUT/report/index.html (`recaption report`), when written
    totals: dict[str, Any] = field(default_factory=dict)  # summary.json's: the whole output's figures

    def ok(self) -> bool:
        return all(s.ok for s in self.summaries.values())

    def to_dict(self) -> dict[str, Any]:
        cap = self.summaries.get("caption")
        images = cap.rows if cap else max((s.rows for s in self.summaries.values()), default=0)
        return {
            "output": self.output,
            "seconds": round(self.seconds, 3),
            "images": images,
            "images_per_second": round(images / self.seconds, 3) if self.seconds > 0 else 0.0,
            "stages": {name: s.to_dict() for name, s in self.summaries.items()},
            "nouns_report": self.report_files,
            "html_report": self.html_report,
            "recaption_version": __version__,
        }


def run_pipeline(cfg: PipelineConfig, *, progress: bool | None = None) -> PipelineResult:
    """Run (or resume) a pipeline; returns per-stage summaries and writes OUTPUT/summary.json."""
    from recaption.shards.lease import hold

    p = plan(cfg)  # every setting checked (and the source opened) before anything is written
    # One writer per folder: the run's own and every stage folder, taken before the first write
    # (an unwritable output is refused here, before any work).
    folders = [cfg.output, *(ps.output for ps in p.stages.values())]
    with hold(folders, command="run"):
        return _run_pipeline(cfg, p, progress)


def _run_pipeline(cfg: PipelineConfig, p: Plan, progress: bool | None) -> PipelineResult:
    check_or_record_config(p)
    t0 = time.time()
    names = list(p.stages)
    summaries: dict[str, RunSummary] = {}
    executor: str = cfg.executor  # choose_executor answers a plain name
    if executor == "auto":
        from recaption.runner.auto import choose_executor, pending_shards

        # No rule on workers here: with one worker each, Ray still overlaps the stages.
        executor, why = choose_executor(
            "auto",
            pending=[pending_shards(ps.stage, ps.output) for ps in p.stages.values()],
            address=cfg.ray.address,
        )
        log.info("executor %s: %s", executor, why)
    if executor == "ray":
        from recaption.runner.ray import RayOptions, StageSpec, run_graph_ray

        specs = [
            StageSpec(
                stage=ps.stage,
                output=ps.output,
                after=names.index(ps.after) if ps.after else None,
                num_workers=ps.workers,
                resources=ps.resources,
            )
            for ps in p.stages.values()
        ]
        opts = RayOptions(address=cfg.ray.address, num_cpus=cfg.ray.num_cpus, max_retries=cfg.ray.max_retries)
        for name, s in zip(names, run_graph_ray(specs, opts, progress=progress), strict=True):
            summaries[name] = s
    else:
        from recaption.runner.local import run_local
        from recaption.runner.progress import ProgressGroup

        # one display for the run: its ETA adds up the stages, run one after another
        group = ProgressGroup(progress, sequential=True, expected_stages=len(p.stages))
        for name, ps in p.stages.items():
            summaries[name] = run_local(ps.stage, ps.output, progress=group)
    seconds = time.time() - t0
    report: dict[str, Any] | None = None
    files: dict[str, str] = {}
    if "nouns" in p.stages:
        from recaption.nouns.stage import merge_reports

        try:
            files, report = merge_reports(
                p.nouns, threshold=cfg.nouns.threshold, report_dir=io.join(cfg.output, "report")
            )
        except ConfigError as e:
            log.warning("no nouns report: %s", e)
    result = PipelineResult(
        summaries=summaries, seconds=seconds, report=report, report_files=files, output=cfg.output
    )
    from recaption.status import run_status

    summary = result.to_dict()
    # What this invocation did is above; a resumed run did only part of the work. The whole
    # output's totals (every finished shard, of every run into this folder) are these:
    summary["totals"] = {
        s["stage"] + ("_text" if str(s["output"]).endswith("features_text") else ""): {
            k: s[k]
            for k in (
                "shards_total",
                "shards_done",
                "complete",
                "rows",
                "errors",
                "warnings",
                "error_reasons",
            )
        }
        for s in run_status(cfg.output)["stages"]
    }
    # Caption quality over the whole output too: a rerun with nothing left to do still shows it.
    from recaption.quality import stage_quality
    from recaption.shards.layout import StageDir

    for ps in p.stages.values():
        name = ps.stage.name + ("_text" if ps.output == p.features_text else "")
        if name in summary["totals"]:
            counters: dict[str, int] = {}
            for st in StageDir(ps.output).read_stats():
                for k, v in (st.get("counters") or {}).items():
                    counters[k] = counters.get(k, 0) + int(v)
            t = summary["totals"][name]
            t["quality"] = stage_quality(ps.stage.name, counters)
    result.totals = summary["totals"]
    from recaption.runner.base import write_run_card

    # `datasets.load_dataset(OUTPUT)`: the run folder itself, its caption shards by default
    write_run_card(cfg.output, [ps.output for ps in p.stages.values()])
    from recaption.report import REPORT_FILE, write_report

    summary["html_report"] = result.html_report = io.join(cfg.output, REPORT_FILE)
    io.write_text_atomic(io.join(cfg.output, "summary.json"), json.dumps(summary, indent=1))
    try:  # after summary.json, which the report shows; a view of the run never fails the run
        write_report(cfg.output)
    except Exception as e:
        log.warning("no HTML report: %s: %s", type(e).__name__, e)
        summary["html_report"] = result.html_report = None
        io.write_text_atomic(io.join(cfg.output, "summary.json"), json.dumps(summary, indent=1))
    return result
