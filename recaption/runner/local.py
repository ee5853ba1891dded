"""Run a stage in this process: one worker, shards in order. The reference for the Ray runner."""

from __future__ import annotations

import functools
import time
import traceback

from recaption.runner.base import RunSummary, log, prepare_output, refresh_dataset_card, run_shard
from recaption.runner.progress import ProgressGroup
from recaption.stage import Stage


def run_local(stage: Stage, output: str, *, progress: bool | ProgressGroup | None = None) -> RunSummary:
    """Process every unfinished shard of ``stage`` into ``output``, in this process.

    ``progress``: rich bars or log lines (``None``: bars in a terminal), or the
    :class:`ProgressGroup` of a run of several stages. Holds the output folder's lease throughout
    (refused at once if another run holds it).
    """
    from recaption.shards.lease import hold

    with hold(output, command=stage.name) as leases:
        return _run_local(stage, output, leases, progress)


def _run_local(stage: Stage, output: str, leases: list, progress: bool | ProgressGroup | None) -> RunSummary:
    from recaption.shards.lease import LeaseHeldError

    shards = stage.shards()
    sd = prepare_output(stage, output, shards)
    done = sd.done_indices()
    pending = [s for s in shards if s.index not in done]
    summary = RunSummary(
        stage=stage.name, output=output, total_shards=len(shards), skipped=len(shards) - len(pending)
    )
    group = progress if isinstance(progress, ProgressGroup) else ProgressGroup(progress)
    bar = group.stage(stage.name, len(shards), summary.skipped, pending)
    t0 = time.time()
    try:
        if pending:
            stage.setup()
            summary.workers = 1
        for shard in pending:
            for lease in leases:
                lease.check()
            bar.shard_started(shard.index)
            try:
                stats = run_shard(
                    stage,
                    shard,
                    output,
                    progress=functools.partial(bar.advance, shard.index),
                    lease=leases[0].token(),
                )
            except (KeyboardInterrupt, LeaseHeldError):  # a lost lease stops the run: not a shard's fault
                raise
            except Exception as e:
                summary.failed[shard.index] = f"{type(e).__name__}: {e}"
                bar.shard_failed(shard.index, summary.failed[shard.index])
                log.debug("%s", traceback.format_exc())
                continue
            summary.done.append(stats)
            bar.shard_done(stats)
    finally:
        bar.close()
        refresh_dataset_card(output, stage.name, leases)
        if pending:
            stage.teardown()
    summary.seconds = time.time() - t0
    return summary
