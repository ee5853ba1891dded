"""Run a stage on Ray: one long-lived actor per worker (per GPU for GPU stages).

Each actor sets the stage up once (loads the model), then processes whole shards handed out by the
driver. A shard is committed by the actor only when complete (temporary name, then rename), so an
actor or node that dies mid-shard leaves nothing visible: the driver starts a replacement actor and
the shard is redone from the start, up to ``max_retries`` times. A stage that raises while setting
up (a wrong model id, say) stops the run at once with that error: retrying would not help.

With no address, Ray starts inside this process (the embedded default); ``address`` or
``RAY_ADDRESS`` joins a cluster. On a cluster, the output must be a path every node can write
(shared filesystem or object store).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from recaption.errors import ConfigError, RecaptionError
from recaption.readers.base import InputShard
from recaption.runner.base import RunSummary, log, prepare_output, run_shard
from recaption.runner.progress import Progress
from recaption.stage import Stage


@dataclass
class RayOptions:
    """How to reach Ray and how many workers to start."""

    address: str | None = None  # None: RAY_ADDRESS if set, else start Ray in this process
    num_workers: int | None = None  # None: as many as the cluster's resources allow
    max_retries: int = 3  # attempts per shard after its worker died
    num_cpus: int | None = None  # CPUs of an embedded local Ray (None: all)
    runtime_env: dict[str, Any] | None = None
    init_kwargs: dict[str, Any] = field(default_factory=dict)


class StageWorker:
    """The actor body: holds one set-up stage and processes shards with it."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def setup(self) -> dict[str, Any]:
        import socket

        self.stage.setup()
        return {"host": socket.gethostname(), "pid": os.getpid()}

    def process(self, shard: dict[str, Any], output: str) -> dict[str, Any]:
        stats = run_shard(self.stage, InputShard.from_dict(shard), output)
        import socket

        stats["worker"] = f"{socket.gethostname()}:{os.getpid()}"
        return stats

    def teardown(self) -> None:
        self.stage.teardown()


def ensure_ray(options: RayOptions) -> bool:
    """Connect to (or start) Ray; returns True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True, **options.init_kwargs}
    if options.runtime_env:
        kwargs["runtime_env"] = options.runtime_env
    if address:
        ray.init(address=address, **kwargs)
    else:
        kwargs.setdefault("include_dashboard", False)
        if options.num_cpus is not None:
            kwargs["num_cpus"] = options.num_cpus
        ray.init(**kwargs)
    return True


def _worker_count(stage: Stage, options: RayOptions, pending: int) -> tuple[int, dict[str, float]]:
    import ray

    res = stage.resources()
    cluster = ray.cluster_resources()
    actor_res = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}
    if res.num_gpus > 0:
        gpus = cluster.get("GPU", 0.0)
        if gpus < res.num_gpus:
            raise ConfigError(
                "--device",
                "cuda",
                "cpu (this Ray cluster has no GPU)",
                hint=f"stage {stage.name} asks {res.num_gpus} GPU per worker; the cluster has {gpus:g}",
            )
        cap = int(gpus // res.num_gpus)
    else:
        cap = max(1, int(cluster.get("CPU", 1.0) // max(res.num_cpus, 1e-3)))
    n = options.num_workers or cap
    if options.num_workers is not None and options.num_workers < 1:
        raise ConfigError("--workers", options.num_workers, "a positive number of workers")
    return max(1, min(n, pending)), actor_res


def run_ray(stage: Stage, output: str, options: RayOptions, *, progress: bool | None = None) -> RunSummary:
    """Process every unfinished shard of ``stage`` on Ray actors."""
    shards = stage.shards()
    sd = prepare_output(stage, output, shards)
    done = sd.done_indices()
    pending = deque(s for s in shards if s.index not in done)
    summary = RunSummary(
        stage=stage.name, output=output, total_shards=len(shards), skipped=len(shards) - len(pending)
    )
    t0 = time.time()
    if not pending:
        summary.seconds = time.time() - t0
        return summary

    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

    started = ensure_ray(options)
    n_workers, actor_res = _worker_count(stage, options, len(pending))
    remote_cls = ray.remote(StageWorker)
    bar = Progress(stage.name, len(shards), summary.skipped, progress)
    attempts: dict[int, int] = {}
    actors: list[Any] = []

    def new_actor() -> Any:
        # Setting up is retried for dead workers only: an exception from setup() is the user's
        # configuration and is raised at once.
        last: Exception | None = None
        for _ in range(options.max_retries + 1):
            actor = remote_cls.options(max_restarts=0, **actor_res).remote(stage)  # type: ignore[attr-defined]
            try:
                info = ray.get(actor.setup.remote())
                log.info("[%s] worker ready on %s (pid %s)", stage.name, info["host"], info["pid"])
                return actor
            except RayTaskError as e:
                ray.kill(actor)
                cause = e.cause if getattr(e, "cause", None) is not None else e
                raise cause from None
            except RayActorError as e:
                last = e
                log.warning("[%s] a worker died while setting up; starting another: %s", stage.name, e)
        raise RecaptionError(f"could not start a {stage.name} worker: {last}")

    try:
        actors = [new_actor() for _ in range(n_workers)]
        idle = list(actors)
        in_flight: dict[Any, tuple[Any, InputShard]] = {}
        while pending or in_flight:
            while idle and pending:
                actor, shard = idle.pop(), pending.popleft()
                in_flight[actor.process.remote(shard.to_dict(), output)] = (actor, shard)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                actor, shard = in_flight.pop(ref)
                try:
                    stats = ray.get(ref)
                except RayTaskError as e:
                    cause = getattr(e, "cause", None) or e
                    summary.failed[shard.index] = f"{type(cause).__name__}: {cause}"
                    bar.shard_failed(shard.index, summary.failed[shard.index])
                    idle.append(actor)
                    continue
                except (RayActorError, GetTimeoutError, RayError) as e:
                    attempts[shard.index] = attempts.get(shard.index, 0) + 1
                    log.warning(
                        "[%s] worker died during shard %d (attempt %d): %s",
                        stage.name,
                        shard.index,
                        attempts[shard.index],
                        type(e).__name__,
                    )
                    actors.remove(actor)
                    if attempts[shard.index] <= options.max_retries:
                        pending.appendleft(shard)
                    else:
                        summary.failed[shard.index] = f"worker died {attempts[shard.index]} times: {e}"
                        bar.shard_failed(shard.index, summary.failed[shard.index])
                    if pending:
                        replacement = new_actor()
                        actors.append(replacement)
                        idle.append(replacement)
                    continue
                summary.done.append(stats)
                bar.shard_done(stats)
                idle.append(actor)
        for a in actors:
            with contextlib.suppress(Exception):
                ray.get(a.teardown.remote(), timeout=60)
    finally:
        bar.close()
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
        if started:
            ray.shutdown()
    summary.seconds = time.time() - t0
    return summary
