"""Progress for people (a rich bar in a terminal) and for logs (a line per shard on a cluster)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("recaption")


class Progress:
    """Shard-level progress; a rich bar when stderr is a terminal, log lines otherwise."""

    def __init__(self, stage: str, total: int, skipped: int, enabled: bool | None = None) -> None:
        self.stage = stage
        self.total = total
        self.done = skipped
        self.rows = 0
        self.started = time.time()
        self._bar: Any = None
        use_bar = sys.stderr.isatty() if enabled is None else enabled
        if use_bar and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn(f"[bold]{stage}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self._task = self._bar.add_task(stage, total=total, completed=skipped, rate="")
            self._bar.start()
        if skipped:
            log.info("[%s] %d/%d shards already done; skipping them", stage, skipped, total)

    def shard_done(self, stats: dict[str, Any]) -> None:
        self.done += 1
        self.rows += int(stats.get("rows", 0))
        rate = self.rows / max(time.time() - self.started, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{rate:.1f} rows/s")
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
        if self._bar is not None:
            self._bar.stop()
