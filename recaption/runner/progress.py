"""Progress for people: rich bars in a terminal, log lines elsewhere (``ray job logs``, CI, files).

Counted in samples, not only in shards: a stage reports each batch it finishes through
:meth:`recaption.shards.writer.ShardOutput.progress`, the runner forwards the counts here (from
this process for a local run, from the actors through a small Ray actor for a Ray run), and each
stage shows its images/s and an ETA, and the run an ETA over its stages.

Outside a terminal a line is logged per finished shard and, while shards are running, at least
every ``interval`` seconds (30 by default, from a heartbeat thread, so that a slow batch does not
silence the log). One :class:`ProgressGroup` per run holds one :class:`StageProgress` per stage, so
stages running at once share a single live display.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("recaption")

#: Seconds between log lines while shards run (outside a terminal).
LOG_INTERVAL = 30.0
#: What a stage's samples are, for people (default: images).
UNITS = {"nouns": "captions"}


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h10m``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def shard_size_hint(shard: Any) -> int | None:
    """Samples in an input shard when its description says (a folder chunk's files, a table's
    rows); ``None`` for tars and other stages' shards, whose size is known once read."""
    files = getattr(shard, "files", ())
    if files:
        return len(files)
    stop = getattr(shard, "stop", None)
    if stop is not None:
        return max(0, int(stop) - int(getattr(shard, "start", 0) or 0))
    return None


class ProgressGroup:
    """Progress of the stages of one run.

    ``enabled``: rich bars (``None``: when stderr is a terminal); otherwise log lines.
    ``sequential``: the stages run one after another (the local executor), so the run's ETA is
    the sum of theirs; otherwise they overlap and it is the longest. ``clock`` and ``interval``
    are for tests; ``heartbeat=False`` starts no thread (call :meth:`tick` yourself).
    """

    def __init__(
        self,
        enabled: bool | None = None,
        *,
        sequential: bool = False,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: bool = True,
        expected_stages: int = 0,
    ) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.sequential = sequential
        # stages of the run not registered yet (a local pipeline starts them one after another)
        self.expected_stages = expected_stages
        self.interval = interval
        self.clock = clock
        self.stages: list[StageProgress] = []
        self._rich: Any = None
        self._run_task: Any = None
        self._open = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat = heartbeat

    # -- display ------------------------------------------------------------------------------------
    def _bars(self) -> Any:
        if self._rich is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._rich = Progress(
                TextColumn("[bold]{task.description:>8}[/]"),
                BarColumn(),
                TextColumn("{task.fields[shards]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[eta]}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self._rich.start()
        return self._rich

    def stage(self, name: str, total: int, skipped: int, shards: list[Any] | None = None) -> StageProgress:
        """A stage's progress: ``total`` shards, ``skipped`` done before; ``shards`` (the pending
        input shards) give size hints for the ETA before the first shard is finished."""
        with self._lock:
            self._open += 1
            st = StageProgress(self, name, total, skipped, shards)
            self.stages.append(st)
            several = max(self.expected_stages, len(self.stages)) >= 2
            if self.enabled and several and self._run_task is None and st._task is not None:
                self._run_task = self._rich.add_task("run", total=1.0, shards="", rate="", eta="")
            self._start_heartbeat()
            return st

    def _start_heartbeat(self) -> None:
        if self._heartbeat and not self.enabled and self._thread is None:
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._beat, args=(self._stop,), name="recaption-progress", daemon=True
            )
            self._thread.start()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(min(self.interval, 5.0)):
            self.tick()

    def tick(self) -> None:
        """Log a line for each running stage not heard of for ``interval`` seconds."""
        with self._lock:
            now = self.clock()
            for st in self.stages:
                if st.running and not st._closed and now - st.last_log >= self.interval:
                    st.log_line()

    def run_eta(self) -> tuple[float | None, bool]:
        """Seconds until every stage of the run is done, and whether that is only a lower bound
        (some stage has no rate yet, or has not started); ``(None, True)`` when nothing is known."""
        etas = [st.eta() for st in self.stages if not st.finished]
        unknown = any(e is None for e in etas) or self.expected_stages > len(self.stages)
        known = [e for e in etas if e is not None]
        if not known:
            return (None, True) if unknown else (0.0, False)
        return (sum(known) if self.sequential else max(known)), unknown

    def run_eta_text(self) -> str:
        eta, partial = self.run_eta()
        if eta is None:
            return "?"
        return ("≥" if partial else "") + format_duration(eta)

    def _refresh(self) -> None:
        if self._rich is None or self._run_task is None:
            return
        done = sum(st.fraction() for st in self.stages) / max(1, len(self.stages), self.expected_stages)
        self._rich.update(self._run_task, completed=done, eta=f"run ETA {self.run_eta_text()}")

    def _closed(self) -> None:
        with self._lock:
            self._open -= 1
            if self._open <= 0:
                self._stop.set()
                self._thread = None  # a later stage of a sequential run starts another
                if self._rich is not None:
                    self._rich.stop()
                    self._rich = None
                    self._run_task = None


class StageProgress:
    """Progress of one stage: shards done, samples done (also inside running shards), rate, ETA."""

    def __init__(
        self, group: ProgressGroup, stage: str, total: int, skipped: int, shards: list[Any] | None = None
    ) -> None:
        self.group = group
        self.stage = stage
        self.total = total
        self.skipped = skipped
        self.done = skipped
        self.rows = 0  # samples of the shards finished by this run
        self.inflight: dict[int, int] = {}  # running shard -> samples done so far
        self.hints = {s.index: h for s in shards or [] if (h := shard_size_hint(s)) is not None}
        self.done_sizes: list[int] = []
        self.started = group.clock()
        self.work_started: float | None = None  # the first shard began (after workers set up)
        self.last_log = self.started
        self._task: Any = None
        self._closed = False
        if group.enabled and total:
            self._task = group._bars().add_task(
                stage, total=total, completed=skipped, shards=self._shards_text(), rate="", eta=""
            )
        if skipped:
            log.info("[%s] %d/%d shards already done; skipping them", stage, skipped, total)

    # -- events -------------------------------------------------------------------------------------
    def shard_started(self, index: int) -> None:
        with self.group._lock:
            self.inflight.setdefault(index, 0)
            if self.work_started is None:
                self.work_started = self.group.clock()

    def advance(self, index: int, n: int) -> None:
        """``n`` more samples of running shard ``index`` are done (ignored for a shard not running:
        a late report from a worker whose shard is already counted, or was given to another)."""
        with self.group._lock:
            if index not in self.inflight:
                return
            self.inflight[index] += int(n)
            self._update()
            if not self.group.enabled and self.group.clock() - self.last_log >= self.group.interval:
                self.log_line()

    def shard_done(self, stats: dict[str, Any]) -> None:
        with self.group._lock:
            index = int(stats.get("shard", -1))
            rows = int(stats.get("rows", 0))
            # The samples the shard held: its rows, or more where the stage reported samples that
            # left no row (an image that did not decode).
            n = max(rows, self.inflight.pop(index, 0))
            self.done += 1
            self.rows += n
            self.done_sizes.append(n)
            self._update()
            if self._task is None:
                self.log_line(
                    f"shard {index} done: {rows:,} rows, {stats.get('errors', 0)} errors, "
                    f"{stats.get('warnings', 0)} warnings in {float(stats.get('seconds', 0.0)):.1f}s; "
                )

    def shard_failed(self, index: int, error: str) -> None:
        with self.group._lock:
            self.inflight.pop(index, None)
        log.error("[%s] shard %d failed: %s", self.stage, index, error)

    def shard_retried(self, index: int) -> None:
        """The shard's worker died: its samples so far are lost and will be redone."""
        with self.group._lock:
            self.inflight.pop(index, None)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.group._closed()

    # -- figures ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self.inflight)

    @property
    def finished(self) -> bool:
        return self._closed or self.done >= self.total

    def samples(self) -> int:
        """Samples done by this run: finished shards' rows and the running shards' counts."""
        return self.rows + sum(self.inflight.values())

    def rate(self) -> float | None:
        """Samples per second since the first shard began (``None`` before any is done)."""
        if self.work_started is None:
            return None
        elapsed = self.group.clock() - self.work_started
        n = self.samples()
        return n / elapsed if elapsed > 0 and n > 0 else None

    def _expected(self, index: int) -> float | None:
        if index in self.hints:
            return float(self.hints[index])
        if self.done_sizes:
            return sum(self.done_sizes) / len(self.done_sizes)
        if self.hints:
            return sum(self.hints.values()) / len(self.hints)
        return None

    def remaining(self) -> float | None:
        """Samples still to do (estimated from shard sizes seen or described; ``None``: unknown)."""
        todo = self.total - self.done
        if todo <= 0:
            return 0.0
        # running shards by index; the others (not started) by the typical size
        sizes: list[float | None] = [self._expected(i) for i in self.inflight]
        others = todo - len(self.inflight)
        typical = self._expected(-1)
        pending = [i for i in self.hints if i not in self.inflight][:others]
        sizes += [self._expected(i) for i in pending]
        sizes += [typical] * (others - len(pending))
        if any(s is None for s in sizes):
            return None
        total = sum(s for s in sizes if s is not None)
        return max(0.0, total - sum(self.inflight.values()))

    def eta(self) -> float | None:
        """Seconds until this stage is done (``None``: not yet known)."""
        left = self.remaining()
        if left == 0:
            return 0.0
        r = self.rate()
        if left is None or r is None:
            return None
        return left / r

    def fraction(self) -> float:
        if self.total <= 0:
            return 1.0
        left = self.remaining()
        if left is None:
            return self.done / self.total
        todo_then = self.total - self.skipped
        whole = self.samples() + left
        return (self.skipped + todo_then * (self.samples() / whole if whole else 1.0)) / self.total

    def _shards_text(self) -> str:
        extra = f" +{len(self.inflight)} running" if self.inflight else ""
        return f"{self.done}/{self.total} shards{extra}"

    @property
    def unit(self) -> str:
        return UNITS.get(self.stage, "images")

    def figures(self) -> str:
        """``1,234 images, 4.1 images/s, ETA 3m05s (run ≥5m40s)``."""
        r = self.rate()
        rate = f"{r:.1f}" if r is not None else "?"
        return (
            f"{self.samples():,} {self.unit}, {rate} {self.unit}/s, ETA {format_duration(self.eta())} "
            f"(run {self.group.run_eta_text()})"
        )

    def log_line(self, prefix: str = "") -> None:
        self.last_log = self.group.clock()
        running = ", ".join(f"shard {i}: {n:,}" for i, n in sorted(self.inflight.items()))
        log.info(
            "[%s] %s%d/%d shards%s; %s",
            self.stage,
            prefix,
            self.done,
            self.total,
            f" ({running})" if running else "",
            self.figures(),
        )

    def _update(self) -> None:
        if self._task is None:
            return
        try:
            self._update_bars()
        except Exception as e:  # the display must never fail the shard it reports on
            log.debug("progress display: %s: %s", type(e).__name__, e)

    def _update_bars(self) -> None:
        r = self.rate()
        bars = self.group._bars()
        bars.update(
            self._task,
            completed=self.fraction() * self.total,
            shards=self._shards_text(),
            rate=f"{r:.1f} {self.unit}/s" if r is not None else "",
            eta=f"ETA {format_duration(self.eta())}",
        )
        self.group._refresh()


def Progress(stage: str, total: int, skipped: int, enabled: bool | None = None) -> StageProgress:
    """A stage's progress in a group of its own (single-stage runs)."""
    return ProgressGroup(enabled).stage(stage, total, skipped)
