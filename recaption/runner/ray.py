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
from dataclasses import dataclass, field
from typing import Any

from recaption.errors import ConfigError, RecaptionError, WorkerFault
from recaption.readers.base import InputShard
from recaption.runner.base import RunSummary, log, prepare_output, refresh_dataset_card, run_shard, unmark
from recaption.runner.progress import ProgressGroup, StageProgress
from recaption.stage import Resources, Stage

WORKER_FAULT_EXIT_CODE = 75  # a worker that found itself broken (EX_TEMPFAIL: retry elsewhere)


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

        from recaption.hub import quiet_progress_bars

        quiet_progress_bars()  # a worker's output goes to log files (and the driver's console)
        self.stage.setup()
        return {"host": socket.gethostname(), "pid": os.getpid()}

    def process(
        self, shard: dict[str, Any], output: str, progress: Any = None, lease: Any = None
    ) -> dict[str, Any]:
        """Process and commit one shard; ``progress`` is ``(sink actor, stage number)``, told the
        samples done as the stage reports them (see :class:`ProgressSink`). ``lease``: the driver's
        :class:`~recaption.shards.lease.LeaseToken` on ``output``, read once before the commit (a
        worker must not commit into a folder whose lease another run took over)."""
        import socket

        worker = f"{socket.gethostname()}:{os.getpid()}"
        s = InputShard.from_dict(shard)
        report = _Reporter(progress[0], progress[1], s.index) if progress is not None else None
        try:
            return run_shard(self.stage, s, output, extra={"worker": worker}, progress=report, lease=lease)
        except WorkerFault as e:
            # This process is broken (a CUDA fault poisons its context): it must take no other shard.
            # Exiting makes the driver see a dead actor and redo the shard on a fresh one.
            log.error("worker %s stops: %s (shard %s is retried on a fresh worker)", worker, e, s.index)
            os._exit(WORKER_FAULT_EXIT_CODE)

    def teardown(self) -> None:
        self.stage.teardown()


class ProgressSink:
    """A tiny actor the workers tell how many samples of their shard are done; the driver takes
    the counts every second or so for its progress display (stages know nothing of it)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[int, int], int] = {}

    def add(self, stage: int, shard: int, n: int) -> None:
        self.counts[(stage, shard)] = self.counts.get((stage, shard), 0) + n

    def take(self) -> list[tuple[int, int, int]]:
        out = [(st, sh, n) for (st, sh), n in self.counts.items()]
        self.counts = {}
        return out


class _Reporter:
    """In a worker: forwards a shard's progress to the sink, at most once a second (one small
    fire-and-forget call; the rest is summed locally, and the shard's stats settle the count)."""

    def __init__(self, sink: Any, stage: int, shard: int, every: float = 1.0) -> None:
        self.sink, self.stage, self.shard, self.every = sink, stage, shard, every
        self.pending = 0
        self.last = 0.0

    def __call__(self, n: int) -> None:
        self.pending += n
        now = time.monotonic()
        if now - self.last >= self.every:
            with contextlib.suppress(Exception):  # progress is for people: it never fails a shard
                self.sink.add.remote(self.stage, self.shard, self.pending)
            self.pending, self.last = 0, now


def _quiet_embedded_token_notice() -> None:
    """Drop Ray's "Token authentication is enabled for this Ray cluster" warning: for a Ray that
    lives inside this command and ends with it, there is nothing for the user to do (token
    authentication stays on; only the notice goes)."""
    import logging

    name = "ray._private.authentication.authentication_token_setup"
    target = logging.getLogger(name)
    if not any(getattr(f, "recaption", False) for f in target.filters):

        class _Filter(logging.Filter):
            recaption = True

            def filter(self, record: logging.LogRecord) -> bool:
                return not str(record.msg).startswith("Token authentication is enabled")

        target.addFilter(_Filter())


def plain_worker_prefixes(stream: Any = None) -> bool:
    """Outside a terminal, Ray's driver prints its workers' lines with colour codes around the
    ``(StageWorker pid=…)`` prefix, which a log file or ``ray job logs`` shows as ``\x1b[36m``
    noise. ``RAY_COLOR_PREFIX=0`` (read by the driver at each line) turns them off; a terminal, or
    a value the user set, is left alone. Returns whether they were turned off."""
    from recaption.hub import is_terminal

    if is_terminal(stream) or "RAY_COLOR_PREFIX" in os.environ:
        return False
    os.environ["RAY_COLOR_PREFIX"] = "0"
    return True


def ensure_ray(options: RayOptions) -> bool:
    """Connect to (or start) Ray; returns True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    import signal
    import threading

    plain_worker_prefixes()
    main = threading.current_thread() is threading.main_thread()
    sigterm_before = signal.getsignal(signal.SIGTERM) if main else None
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
        # "local": a new Ray inside this process, never a cluster that `ray start` left on this machine.
        _quiet_embedded_token_notice()
        before = _child_pids()
        with _loopback_only(kwargs):
            ray.init(address="local", **kwargs)
        _reap_with_this_process(_child_pids() - before)
    if callable(sigterm_before):
        # ray.init installs its own SIGTERM handler in the driver (a stack dump, then exit). Put
        # back the one the program had: the CLI's stops a run as Ctrl-C does, actors killed,
        # unfinished shards dropped and finished ones kept for the rerun.
        signal.signal(signal.SIGTERM, sigterm_before)
    return True


_REAPER_CODE = """
import os, sys, signal, psutil
pids = [int(p) for p in sys.argv[1:]]
procs = []
for pid in pids:
    try:
        procs.append(psutil.Process(pid))
    except psutil.Error:
        pass
sys.stdin.read()  # returns when the driver's end of the pipe closes: it exited or was killed
for p in procs:
    try:
        if p.is_running():  # same pid and start time: never a process that reused the pid
            p.kill()
    except psutil.Error:
        pass
"""


def _child_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _reap_with_this_process(ray_pids: set[int]) -> None:
    """The processes an embedded Ray started (``ray_pids``: this process's children that
    ``ray.init`` added, never others it has) die with this one, even when it is killed (-9).

    Ray's own agents notice a dead driver only after their calls to the (dead) GCS time out, a
    minute or more later. A small watcher holds a pipe from this process; when the pipe closes it
    kills those processes (each checked by start time, so never a reused pid).
    """
    import subprocess
    import sys

    children = sorted(ray_pids)
    if not children:
        return
    _REAPER["proc"] = subprocess.Popen(
        [sys.executable, "-c", _REAPER_CODE, *map(str, children)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the driver's group must not stop it first
    )


_REAPER: dict[str, Any] = {"proc": None}  # the watcher of this process's embedded Ray


def _release_reaper() -> None:
    """After ``ray.shutdown()``: let the watcher kill any straggler now, and exit."""
    proc = _REAPER.pop("proc", None)
    _REAPER["proc"] = None
    if proc is not None:
        with contextlib.suppress(Exception):
            proc.stdin.close()
            proc.wait(timeout=10)


@contextlib.contextmanager
def _loopback_only(kwargs: dict[str, Any]) -> Any:
    """Make an embedded Ray listen on loopback only: its GCS, raylet, workers and agents bind to
    the node address, and nothing outside this machine has any business with them (their metrics
    ports answer without authentication).

    ``ray.init`` deliberately replaces a loopback ``_node_ip_address`` with the host's external
    address (it expects other nodes to join); an embedded Ray has none, so that replacement is
    skipped while it starts. Where Ray lacks the hook (another version), it starts as before.
    """
    try:
        from ray._private import services
    except ImportError:  # pragma: no cover - a Ray without the module: nothing to adjust
        yield
        return
    if not hasattr(services, "resolve_ip_for_localhost") or "_node_ip_address" in kwargs:
        yield
        return
    kwargs["_node_ip_address"] = "127.0.0.1"
    original = services.resolve_ip_for_localhost
    services.resolve_ip_for_localhost = lambda host: host  # type: ignore[assignment]
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = original  # type: ignore[assignment]


@dataclass
class StageSpec:
    """One stage of a run: where it writes, what it waits for, and how many workers it gets.

    ``after``: the index (in the spec list) of the stage whose shard ``i`` must be committed
    before this stage's shard ``i`` starts; this is how a pipeline streams shard by shard.
    """

    stage: Stage
    output: str
    after: int | None = None
    num_workers: int | None = None
    resources: Resources | None = None  # e.g. fractional GPUs when two stages share one GPU


@dataclass
class _State:
    spec: StageSpec
    shards: dict[int, InputShard]
    pending: list[int]
    done: set[int]
    summary: RunSummary
    bar: StageProgress
    actors: list[Any] = field(default_factory=list)
    idle: list[Any] = field(default_factory=list)
    starting: int = 0
    starting_since: float = 0.0  # when the oldest worker still starting was asked for
    running: int = 0
    setup_failures: int = 0
    finished: bool = False


def _capacity(res: Resources, cluster: dict[str, float], name: str) -> int:
    if res.num_gpus > 0:
        gpus = cluster.get("GPU", 0.0)
        if gpus < res.num_gpus:
            raise ConfigError(
                "--device",
                "cuda",
                "cpu (this Ray cluster has no GPU)",
                hint=f"stage {name} asks {res.num_gpus:g} GPU per worker; the cluster has {gpus:g}",
            )
        if res.num_gpus < 1:
            # A fraction never spans two GPUs: 0.8 fits once per GPU, 0.5 twice.
            return max(1, int(gpus) * int(1 / res.num_gpus + 1e-9))
        return max(1, int(gpus // res.num_gpus))
    return max(1, int(cluster.get("CPU", 1.0) // max(res.num_cpus, 1e-3)))


def run_graph_ray(
    specs: list[StageSpec], options: RayOptions, *, progress: bool | ProgressGroup | None = None
) -> list[RunSummary]:
    """Run several stages at once on Ray; stage B's shard i starts as soon as its upstream shard i is done.

    Returns one :class:`RunSummary` per spec. A shard whose upstream shard failed is reported as
    failed ("upstream shard failed") and not attempted. The driver holds every output folder's
    lease throughout (refused at once if another run holds one); each shard task carries the
    lease's token, which the worker verifies before committing. A lost lease stops the run
    (:class:`~recaption.shards.lease.LeaseLostError`).
    """
    from recaption.shards.lease import hold

    with hold([s.output for s in specs], command="+".join(s.stage.name for s in specs)) as leases:
        return _run_graph_ray(specs, options, leases, progress)


def _run_graph_ray(
    specs: list[StageSpec], options: RayOptions, leases: list[Any], progress: bool | ProgressGroup | None
) -> list[RunSummary]:
    from recaption.shards.lease import LeaseHeldError

    t0 = time.time()
    tokens = [lease.token() for lease in leases]  # one per spec, in order
    states: list[_State] = []
    group = progress if isinstance(progress, ProgressGroup) else ProgressGroup(progress)
    for spec in specs:
        shards = spec.stage.shards()
        sd = prepare_output(spec.stage, spec.output, shards)
        done = sd.done_indices() & {s.index for s in shards}
        if spec.after is not None:
            # A shard redone upstream (its input changed) is redone here too, even where this
            # stage's recorded input still matches: the upstream file is about to be rewritten.
            for idx in sorted(set(states[spec.after].pending) & done):
                log.info(
                    "[%s] shard %d: its upstream shard is being redone; redoing it too", spec.stage.name, idx
                )
                unmark(sd, idx)
                done.discard(idx)
        summary = RunSummary(
            stage=spec.stage.name, output=spec.output, total_shards=len(shards), skipped=len(done)
        )
        states.append(
            _State(
                spec=spec,
                shards={s.index: s for s in shards},
                pending=[s.index for s in shards if s.index not in done],
                done=set(done),
                summary=summary,
                bar=group.stage(
                    spec.stage.name, len(shards), len(done), [s for s in shards if s.index not in done]
                ),
            )
        )
    if not any(st.pending for st in states):
        for st in states:
            st.bar.close()
            st.summary.seconds = time.time() - t0
        return [st.summary for st in states]

    import ray
    from ray.exceptions import RayActorError, RayError, RayTaskError

    started = ensure_ray(options)
    cluster = ray.cluster_resources()
    remote_cls: Any = ray.remote(StageWorker)
    # No CPU of its own: it only sums counts. Progress is best effort: without it, shards still count.
    sink: Any = None
    with contextlib.suppress(Exception):
        sink = ray.remote(num_cpus=0)(ProgressSink).remote()
    last_poll = time.monotonic()

    def poll_progress(force: bool = False) -> None:
        nonlocal last_poll
        if sink is None or (not force and time.monotonic() - last_poll < 1.0):
            return
        last_poll = time.monotonic()
        with contextlib.suppress(Exception):
            for i, idx, n in ray.get(sink.take.remote(), timeout=10):
                states[i].bar.advance(idx, n)

    # ref -> (kind, state index, actor, shard index)
    waiting: dict[Any, tuple[str, int, Any, int]] = {}

    resolved: dict[int, Resources] = {}

    def resources(st: _State) -> Resources:
        key = id(st)
        if key not in resolved:
            res = st.spec.resources or st.spec.stage.resources()
            if res.gpu_optional and res.num_gpus > 0 and cluster.get("GPU", 0.0) < res.num_gpus:
                log.info("[%s] no GPU in the Ray cluster: workers run on CPU", st.spec.stage.name)
                res = Resources(num_cpus=res.num_cpus, num_gpus=0.0, memory_bytes=res.memory_bytes)
            resolved[key] = res
        return resolved[key]

    def wanted_workers(st: _State, ready: int) -> int:
        # 0 is a mistake to report, not "as many as fit" (only None means that)
        cap = st.spec.num_workers if st.spec.num_workers is not None else options.num_workers
        if cap is None:
            cap = _capacity(resources(st), cluster, st.spec.stage.name)
        if cap < 1:
            raise ConfigError("--workers", cap, "a positive number of workers")
        return min(cap, ready + st.running)

    def start_actor(i: int) -> None:
        st = states[i]
        res = resources(st)
        kw: dict[str, Any] = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}
        if res.memory_bytes:
            kw["memory"] = res.memory_bytes
        actor = remote_cls.options(max_restarts=0, **kw).remote(st.spec.stage)  # type: ignore[attr-defined]
        st.actors.append(actor)
        st.summary.workers += 1
        if st.starting == 0:
            st.starting_since = time.time()
        st.starting += 1
        waiting[actor.setup.remote()] = ("setup", i, actor, -1)

    def upstream_state(i: int, idx: int) -> str:
        after = states[i].spec.after
        if after is None:
            return "ready"
        up = states[after]
        if idx in up.done:
            return "ready"
        if idx in up.summary.failed or idx not in up.shards:
            return "failed"
        return "wait"

    def retire(i: int) -> None:
        st = states[i]
        if st.finished or st.pending or st.running:
            return
        after = st.spec.after
        if after is not None and not states[after].finished:
            return
        st.finished = True
        # Workers still starting (waiting for resources, say) are no longer needed.
        for ref, (kind, j, _, _) in list(waiting.items()):
            if kind == "setup" and j == i:
                del waiting[ref]
        for a in st.actors:
            with contextlib.suppress(Exception):
                ray.get(a.teardown.remote(), timeout=60)
            with contextlib.suppress(Exception):
                ray.kill(a)
        st.actors.clear()
        st.idle.clear()
        st.bar.close()
        st.summary.seconds = time.time() - t0

    def dispatch() -> None:
        for i, st in enumerate(states):
            ready = []
            for idx in list(st.pending):
                up = upstream_state(i, idx)
                if up == "failed":
                    st.pending.remove(idx)
                    st.summary.failed[idx] = "upstream shard failed; not attempted"
                elif up == "ready":
                    ready.append(idx)
            while st.idle and ready:
                actor, idx = st.idle.pop(), ready.pop(0)
                st.pending.remove(idx)
                st.running += 1
                st.bar.shard_started(idx)
                report = (sink, i) if sink is not None else None
                ref = actor.process.remote(st.shards[idx].to_dict(), st.spec.output, report, tokens[i])
                waiting[ref] = ("shard", i, actor, idx)
            want = wanted_workers(st, len(ready))
            while len(st.actors) < want:
                start_actor(i)
            retire(i)

    def release_idle_downstream() -> None:
        """Free the resources of idle downstream workers while an upstream worker cannot start.

        Downstream workers wait for upstream shards; if they hold the CPUs or GPUs an upstream
        worker needs (after a node was lost, say), neither would ever move. They are started again
        when work for them is ready.
        """
        starved = [
            st for st in states if st.starting and time.time() - st.starting_since > 10.0 and st.pending
        ]
        if not starved:
            return
        for st in states:
            if st.spec.after is None or st in starved or not st.idle:
                continue
            actor = st.idle.pop()
            st.actors.remove(actor)
            log.info(
                "[%s] releasing an idle worker so that %s can start",
                st.spec.stage.name,
                starved[0].spec.stage.name,
            )
            with contextlib.suppress(Exception):
                ray.kill(actor)
        for st in starved:
            st.starting_since = time.time()

    try:
        dispatch()
        while waiting:
            for lease in leases:
                lease.check()
            ready_refs, _ = ray.wait(list(waiting), num_returns=1, timeout=1.0)
            poll_progress()
            if not ready_refs:
                release_idle_downstream()
                continue
            for ref in ready_refs:
                kind, i, actor, idx = waiting.pop(ref)
                st = states[i]
                name = st.spec.stage.name
                if kind == "setup":
                    st.starting -= 1
                    st.starting_since = time.time()
                    try:
                        info = ray.get(ref)
                        log.info("[%s] worker ready on %s (pid %s)", name, info["host"], info["pid"])
                        st.idle.append(actor)
                    except RayTaskError as e:
                        # The stage's own setup raised: a configuration problem; retrying won't help.
                        cause = e.cause if getattr(e, "cause", None) is not None else e
                        raise cause from None
                    except RayActorError as e:
                        st.actors.remove(actor)
                        st.setup_failures += 1
                        log.warning("[%s] a worker died while setting up: %s", name, type(e).__name__)
                        if st.setup_failures > options.max_retries * max(1, len(st.shards)):
                            raise RecaptionError(f"could not start a {name} worker: {e}") from None
                    except RayError as e:
                        raise RecaptionError(f"could not start a {name} worker: {e}") from None
                    continue
                st.running -= 1
                try:
                    stats = ray.get(ref)
                except RayTaskError as e:
                    cause = getattr(e, "cause", None) or e
                    if isinstance(cause, LeaseHeldError):  # another run owns the folder now: stop
                        raise cause from None
                    st.summary.failed[idx] = f"{type(cause).__name__}: {cause}"
                    st.bar.shard_failed(idx, st.summary.failed[idx])
                    st.idle.append(actor)
                except (RayActorError, RayError) as e:
                    attempts = st.summary.retries.get(idx, 0) + 1
                    st.summary.retries[idx] = attempts
                    log.warning(
                        "[%s] worker died during shard %d (attempt %d): %s",
                        name,
                        idx,
                        attempts,
                        type(e).__name__,
                    )
                    if actor in st.actors:
                        st.actors.remove(actor)
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
                    st.bar.shard_retried(idx)
                    if attempts <= options.max_retries:
                        st.pending.insert(0, idx)
                    else:
                        st.summary.failed[idx] = f"worker died {attempts} times; last: {e}"
                        st.bar.shard_failed(idx, st.summary.failed[idx])
                else:
                    poll_progress(force=True)  # counts sent before the shard's end, then its total
                    st.done.add(idx)
                    st.summary.done.append(stats)
                    st.bar.shard_done(stats)
                    st.idle.append(actor)
            dispatch()
        for i in range(len(states)):
            retire(i)
    finally:
        for i, st in enumerate(states):
            st.bar.close()
            refresh_dataset_card(st.spec.output, st.spec.stage.name, leases[i : i + 1])  # its own lease
            for a in st.actors:
                with contextlib.suppress(Exception):
                    ray.kill(a)
            if not st.summary.seconds:
                st.summary.seconds = time.time() - t0
        if sink is not None:
            with contextlib.suppress(Exception):
                ray.kill(sink)
        if started:
            ray.shutdown()
            _release_reaper()
    return [st.summary for st in states]


def run_ray(
    stage: Stage, output: str, options: RayOptions, *, progress: bool | ProgressGroup | None = None
) -> RunSummary:
    """Process every unfinished shard of ``stage`` on Ray actors."""
    return run_graph_ray([StageSpec(stage=stage, output=output)], options, progress=progress)[0]
