"""Progress for people (rich bars in a terminal) and for logs (a line per shard on a cluster).

One :class:`ProgressGroup` per run holds one bar per stage, so stages running at once share a
single live display.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("recaption")


class ProgressGroup:
    """Bars for the stages of one run; log lines instead when stderr is not a terminal."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._rich: Any = None
        self._open = 0

    def _bars(self) -> Any:
        if self._rich is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._rich = Progress(
                TextColumn("[bold]{task.description:>8}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self._rich.start()
        return self._rich

    def stage(self, name: str, total: int, skipped: int) -> StageProgress:
        self._open += 1
        return StageProgress(self, name, total, skipped)

    def _closed(self) -> None:
        self._open -= 1
        if self._open <= 0 and self._rich is not None:
            self._rich.stop()
            self._rich = None


class StageProgress:
    """Shard-level progress of one stage."""

    def __init__(self, group: ProgressGroup, stage: str, total: int, skipped: int) -> None:
        self.group = group
        self.stage = stage
        self.total = total
        self.done = skipped
        self.rows = 0
        self.started = time.time()
        self._task: Any = None
        self._closed = False
        if group.enabled and total:
            self._task = group._bars().add_task(stage, total=total, completed=skipped, rate="")
        if skipped:
            log.info("[%s] %d/%d shards already done; skipping them", stage, skipped, total)

    def shard_done(self, stats: dict[str, Any]) -> None:
        self.done += 1
        self.rows += int(stats.get("rows", 0))
        rate = self.rows / max(time.time() - self.started, 1e-9)
        if self._task is not None:
            self.group._bars().update(self._task, completed=self.done, rate=f"{rate:.1f} rows/s")
        else:
            log.info(
                "[%s] shard %d done (%d/%d): %d rows, %d errors, %d warnings, %.1fs; %.1f rows/s overall",
                self.stage,
                stats.get("shard", -1),
                self.done,
                self.total,
                stats.get("rows", 0),
                stats.get("errors", 0),
                stats.get("warnings", 0),
                stats.get("seconds", 0.0),
                rate,
            )

    def shard_failed(self, index: int, error: str) -> None:
        log.error("[%s] shard %d failed: %s", self.stage, index, error)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.group._closed()


def Progress(stage: str, total: int, skipped: int, enabled: bool | None = None) -> StageProgress:
    """A stage's progress in a group of its own (single-stage runs)."""
    return ProgressGroup(enabled).stage(stage, total, skipped)
