"""Runners: execute a :class:`~recaption.stage.Stage` over its shards, in-process or on Ray.

They know nothing about models: a stage is shipped to workers, set up once per worker, and given
whole shards. Finished shards are skipped; a failed worker's shard is redone from the start.
"""

from recaption.runner.base import RunSummary, prepare_output, run_shard
from recaption.runner.local import run_local
from recaption.runner.ray import RayOptions, StageSpec, run_graph_ray, run_ray


def run_stage(
    stage,
    output: str,
    *,
    executor: str = "local",
    ray: RayOptions | None = None,
    progress: bool | None = None,
) -> RunSummary:
    """Run ``stage`` into ``output`` with the ``"local"``, ``"ray"`` or ``"auto"`` executor
    (``auto``: see :mod:`recaption.runner.auto`)."""
    from recaption.runner.auto import choose_executor, pending_shards
    from recaption.runner.base import log

    ray = ray or RayOptions()
    if executor == "auto":
        executor, why = choose_executor(
            "auto", pending=[pending_shards(stage, output)], address=ray.address, workers=ray.num_workers
        )
        log.info("[%s] executor %s: %s", stage.name, executor, why)
    else:
        executor, _ = choose_executor(executor, pending=[])
    if executor == "local":
        return run_local(stage, output, progress=progress)
    return run_ray(stage, output, ray, progress=progress)


__all__ = [
    "RayOptions",
    "RunSummary",
    "StageSpec",
    "prepare_output",
    "run_graph_ray",
    "run_local",
    "run_ray",
    "run_shard",
    "run_stage",
]
