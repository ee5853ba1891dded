"""What every executor shares: output-folder checks, shard commit, and the run summary."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from recaption import __version__, interrupts, io
from recaption.errors import RecaptionError
from recaption.quality import stage_quality
from recaption.readers.base import InputShard
from recaption.shards.layout import PART_RE, StageDir
from recaption.shards.lease import LeaseLostError, LeaseToken
from recaption.shards.writer import ShardOutput
from recaption.stage import Stage

log = logging.getLogger("recaption")


class OutputConflictError(RecaptionError):
    """The output folder was written by a different configuration or from different input."""


def plan_digest(shards: list[InputShard]) -> str:
    h = hashlib.sha256()
    for s in shards:
        # a shard's companions (sidecars, manifests) are compared per shard, not here: one that
        # appears redoes its shard instead of making the whole rerun a different source
        d = s.to_dict()
        d.pop("companions", None)
        h.update(json.dumps(d, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<unset>"), new.get(k, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} → {b!r}")
    return out


def prepare_output(stage: Stage, output: str, shards: list[InputShard]) -> StageDir:
    """Create the output folder, or check that a rerun matches the configuration it was made with.

    The caller holds the folder's lease (:mod:`recaption.shards.lease`), so nothing else writes
    here: what a killed run left behind (temporary files in every folder of the stage, progress
    markers, unfinished shards' files, incomplete multipart uploads) is swept, and finished shards
    whose input changed since are marked unfinished, to be redone.
    """
    sd = StageDir(output)
    io.makedirs(output)
    record = {
        "stage": stage.name,
        "fingerprint": json.loads(json.dumps(stage.fingerprint(), default=str)),
        "shards": len(shards),
        "plan_digest": plan_digest(shards),
    }
    if io.exists(sd.stage_file):
        old = json.loads(io.read_text(sd.stage_file))
        recorded = {k: old.get(k) for k in ("stage", "fingerprint", "shards", "plan_digest")}
        if isinstance(recorded["fingerprint"], dict):
            recorded["fingerprint"] = stage.recorded_fingerprint(recorded["fingerprint"])
        changes = _diff(recorded, record)
        if changes and old.get("stage") == stage.name and not sd.done_indices():
            # Nothing finished yet (a first try that failed on every shard): nothing would mix,
            # so the corrected configuration simply replaces the recorded one.
            log.info(
                "%s: no finished shards; recording the new configuration (%s)", output, "; ".join(changes)
            )
            for url in sd.present_part_files():
                io.remove(url)
            io.write_text_atomic(
                sd.stage_file,
                json.dumps({**record, "recaption_version": __version__}, indent=1, sort_keys=True),
            )
        elif changes:
            raise OutputConflictError(
                f"{output} was written by a different {old.get('stage')} run; refusing to mix outputs. "
                "Changed: "
                + "; ".join(changes)
                + _source_changes(sd, shards)
                + ". Use a new output folder, or delete this one to start over."
            )
    else:
        io.write_text_atomic(
            sd.stage_file, json.dumps({**record, "recaption_version": __version__}, indent=1, sort_keys=True)
        )
    write_dataset_card(output, stage.name)
    sweep_leftovers(sd)
    redo_changed_inputs(sd, shards)
    return sd


def _source_changes(sd: StageDir, shards: list[InputShard]) -> str:
    """The input files finished shards were made from that the source no longer has: why the plan
    changed, in file names."""
    from recaption.shards.identity import shard_paths

    recorded = {
        i["path"] for s in sd.read_stats() for i in s.get("input_identity") or () if not i.get("companion")
    }
    if not recorded:
        return ""
    gone = sorted(recorded - {p for s in shards for p in shard_paths(s)})
    if not gone:
        return ""
    more = ", …" if len(gone) > 3 else ""
    return f" ({len(gone)} input file(s) no longer in the source: {', '.join(gone[:3])}{more})"


def sweep_leftovers(sd: StageDir) -> None:
    """Remove what unfinished attempts left in any folder of the stage; abort their uploads."""
    done = sd.done_indices()
    for url in io.walk_files(sd.url):
        name = io.basename(url)
        rel = url[len(sd.url) :].lstrip("/")
        if io.is_tmp(url) or rel.startswith("_progress/"):
            io.remove(url)
        elif "/" not in rel and (m := PART_RE.match(name)) and int(m.group(1)) not in done:
            # data written straight to its final name (object stores) by an attempt that never
            # committed: no reader believes it, but tools reading the folder wholesale would
            io.remove(url)
    for key in io.abort_uploads(sd.url):
        log.info("%s: aborted an incomplete upload a killed run left (%s)", sd.url, key)


def redo_changed_inputs(sd: StageDir, shards: list[InputShard]) -> set[int]:
    """Unmark finished shards whose input files changed since they were made; returns them."""
    from recaption.shards.identity import compare_shards, forget_listings

    forget_listings()  # a local run's shards are recorded in this process: from listings made now

    stats = {int(s["shard"]): s for s in sd.read_stats() if s.get("input_identity")}
    if not stats:
        return set()
    result = compare_shards(
        {i: s["input_identity"] for i, s in stats.items()},
        {s.index: s for s in shards},
        listed=[i for i, s in stats.items() if s.get("input_companions_listed")],
    )
    for i, why in result.vanished.items():
        log.warning("%s: shard %d was made from input that vanished: %s; its output is kept", sd.url, i, why)
    for i, why in result.changed.items():
        log.warning("%s: shard %d's input changed since it was made: %s; redoing it", sd.url, i, why)
        unmark(sd, i)
    for i, ids in result.refreshed.items():
        paths = result.same_content[i]
        log.info(
            "%s: shard %d: %s%s is the same content (size, modification time and fingerprint equal; "
            "only its inode or ctime changed, as by a chmod or a copy of the same bytes): kept",
            sd.url,
            i,
            paths[0],
            f" (and {len(paths) - 1} more)" if len(paths) > 1 else "",
        )
        # brought up to date so the next rerun does not fingerprint these files again; written
        # as a whole file replacing the old one, so the shard stays finished throughout
        io.write_text_atomic(
            sd.stats(i), json.dumps({**stats[i], "input_identity": ids}, indent=1, sort_keys=True)
        )
    return set(result.changed)


def unmark(sd: StageDir, index: int) -> None:
    """Make a finished shard unfinished (its stats file removed first: nothing believes it after)."""
    io.remove(sd.stats(index))


HF_CONFIG_FILE = ".huggingface.yaml"
DATASET_CONFIG = """\
# Written by recaption for Hugging Face `datasets`: the rows are the data shards only; the `_`
# folders (failure manifests, stats, side outputs) are the run's bookkeeping. The description
# names the finished shards' state: `datasets` caches a folder under its name and a hash of this
# configuration, so without it every `captions/` folder would share one cache entry, and a
# resumed run's new shards would never be read.
configs:
- config_name: default
  description: "recaption {stage} shards, state {state}"
  data_files:
  - split: train
    path: "part-*.parquet"
"""


def shards_state(output: str) -> str:
    """A digest of what marks ``output``'s shards finished (the stats files: names, sizes, times
    or ETags) and of its stage record: it changes whenever a shard is committed or redone, and
    differs between two runs' folders. One listing, no file read."""
    h = hashlib.sha256()
    for folder in (output, io.join(output, "_stats")):
        entries = io.list_entries(folder)
        for url in sorted(entries):
            e, name = entries[url], io.basename(url)
            if folder == output and name != "_stage.json":
                continue
            if io.is_tmp(name):
                continue
            fields = [name, e.get("size")] + [e.get(k) for k in ("mtime", "ino", "ETag", "LastModified")]
            h.update(repr(fields).encode() + b"\n")
    return h.hexdigest()[:16]


def write_dataset_card(output: str, stage: str) -> None:
    """``.huggingface.yaml`` naming the data files, so ``datasets.load_dataset(output)`` reads
    ``part-*.parquet`` and not the failure manifests. Hidden, unlike a ``README.md`` card, so that
    ``pandas.read_parquet(output)`` (which skips ``.``/``_`` names only) still reads the folder.
    Rewritten when a run of the stage starts and ends (:func:`refresh_dataset_card`): its
    description carries :func:`shards_state`, which keys ``datasets``' cache to this folder's
    current shards."""
    io.write_text_atomic(
        io.join(output, HF_CONFIG_FILE), DATASET_CONFIG.format(stage=stage, state=shards_state(output))
    )


def refresh_dataset_card(output: str, stage: str, leases: Sequence[Any] = ()) -> None:
    """Rewrite the card once a run of the stage ends (finished, failed or interrupted), by the
    driver alone: once per run, not per shard (a listing of ``_stats/`` each time would cost
    O(shards²) on an object store, and workers racing to write it could leave an older state
    last). Skipped when the folder's lease was lost: it is another run's folder now."""
    if any(getattr(lease, "lost", False) for lease in leases):
        return
    try:
        if not io.exists(StageDir(output).stage_file):  # never prepared: nothing to describe
            return
        write_dataset_card(output, stage)
    except OSError as e:  # the shards are committed whatever happens to this file
        log.warning("%s: could not update %s: %s", output, HF_CONFIG_FILE, e)


RUN_CONFIG = """\
# Written by recaption for Hugging Face `datasets`: `load_dataset(RUN)` reads the caption shards,
# `load_dataset(RUN, "nouns")` (or "features"...) another stage's; never the `_` bookkeeping
# folders, the report or summary.json. Each description names its shards' state (see the
# stage folder's own .huggingface.yaml): datasets' cache follows the shards.
configs:
"""


def write_run_card(run: str, stage_folders: list[str]) -> None:
    """``RUN/.huggingface.yaml``: one ``datasets`` configuration per stage folder of a pipeline
    run that has been started (``captions`` the default), so the run folder itself loads."""
    entries = []
    for url in stage_folders:
        name = io.basename(url.rstrip("/"))
        # only the run's own stage folders: a path in the card is relative to the run folder
        own = io.normalize(url) == io.normalize(io.join(run, name))
        if not own or not io.exists(io.join(url, "_stage.json")):
            continue
        entries.append(
            f"- config_name: {name}\n"
            + ("  default: true\n" if name == "captions" else "")
            + f'  description: "recaption {name} shards, state {shards_state(url)}"\n'
            + f'  data_files:\n  - split: train\n    path: "{name}/part-*.parquet"\n'
        )
    if entries:
        io.write_text_atomic(io.join(run, HF_CONFIG_FILE), RUN_CONFIG + "".join(entries))


def run_shard(
    stage: Stage,
    shard: InputShard,
    output: str,
    extra: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    lease: LeaseToken | None = None,
) -> dict[str, Any]:
    """Process one shard and commit it; on any error nothing becomes visible.

    ``extra`` goes into the shard's stats file (e.g. which worker did it); ``progress`` is told
    the samples done as the stage reports them (``ShardOutput.progress``). ``lease``: the run's
    lease on ``output``, verified before the shard commits; if another run has taken it over, the
    shard is dropped and :class:`~recaption.shards.lease.LeaseLostError` raised (also when the
    shard failed otherwise meanwhile: the new holder's sweep removes this run's temporary files).
    """
    sd = StageDir(output)
    out: ShardOutput | None = None
    try:
        # Made and bound as one step: an interrupt between the two would leave its open file.
        with interrupts.deferred():
            out = ShardOutput(
                sd,
                shard,
                stage.schema(),
                stage=stage.name,
                metadata=stage.file_metadata(),
                compression=stage.compression,
                writer_options=stage.parquet_options(),
                size_policy=stage.size_policy(),
                lease=lease,
            )
        out.on_progress = progress
        from recaption.shards.identity import shard_identity

        # Before reading: a file replaced while being read then differs on the next run.
        out.input_identity = shard_identity(shard)
        stats = stage.process_shard(shard, out) or {}
        done = out.commit({**stats, **(extra or {})})
    except BaseException as e:
        lost = None
        if lease is not None and isinstance(e, Exception) and not isinstance(e, LeaseLostError):
            lost = lease.lost_error()  # one read, on failure only
        if out is not None:
            out.lease_lost = out.lease_lost or lost is not None
            out.abort()
        if lost is not None:
            raise LeaseLostError(f"{lost}. Shard {shard.index} was dropped ({type(e).__name__}: {e})") from e
        raise
    return done


@dataclass
class RunSummary:
    """What a run did: shards done now and before, failures, throughput."""

    stage: str
    output: str
    total_shards: int
    skipped: int = 0
    done: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    retries: dict[int, int] = field(default_factory=dict)  # shard -> times its worker died
    workers: int = 0  # workers started (Ray actors, restarts included; 1 for a local run)
    seconds: float = 0.0
    started: float = field(default_factory=time.time)

    @property
    def rows(self) -> int:
        return sum(int(s.get("rows", 0)) for s in self.done)

    @property
    def errors(self) -> int:
        return sum(int(s.get("errors", 0)) for s in self.done)

    @property
    def warnings(self) -> int:
        return sum(int(s.get("warnings", 0)) for s in self.done)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def counters(self) -> dict[str, int]:
        """The stage's own counters (``captioned``, ``length_limited``...) summed over the shards
        done now."""
        out: dict[str, int] = {}
        for s in self.done:
            for k, v in (s.get("counters") or {}).items():
                out[k] = out.get(k, 0) + int(v)
        return dict(sorted(out.items()))

    def error_reasons(self, kind: str = "error") -> dict[str, int]:
        """Reasons by count over the shards done now (``kind="warning"``: the warnings')."""
        out: dict[str, int] = {}
        for s in self.done:
            for k, v in (s.get(f"{kind}_reasons") or {}).items():
                out[k] = out.get(k, 0) + int(v)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def to_dict(self) -> dict[str, Any]:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        return {
            "stage": self.stage,
            "output": self.output,
            "total_shards": self.total_shards,
            "skipped_shards": self.skipped,
            "done_shards": len(self.done),
            "failed_shards": {str(k): v for k, v in sorted(self.failed.items())},
            "retried_shards": {str(k): v for k, v in sorted(self.retries.items())},
            "workers": self.workers,
            "rows": self.rows,
            "errors": self.errors,
            "warnings": self.warnings,
            "error_reasons": self.error_reasons(),
            "warning_reasons": self.error_reasons("warning"),
            "counters": self.counters,
            # finish reasons, repetition, prompt fallbacks, T5 truncation (None: not a caption stage)
            "quality": stage_quality(self.stage, self.counters),
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(rate, 3),
        }

    def raise_if_failed(self) -> None:
        if self.failed:
            first = next(iter(sorted(self.failed.items())))
            raise RecaptionError(
                f"{len(self.failed)} shard(s) of stage {self.stage} failed and were not written "
                f"(rerun to retry them); first: shard {first[0]}: {first[1]}"
            )
