"""Counting nouns on several cores: one spaCy model per worker, exact merged statistics.

The pipeline's own runner runs one :class:`~recaption.nouns.counter.NounCounter` per Ray worker
per shard; this module is the same idea for a list (or any iterable) of texts, used by the
benchmark and handy in a notebook:

    result = count_texts_parallel(texts, NounOptions(), workers=2)        # processes
    result = count_texts_parallel(texts, NounOptions(), workers=2, backend="ray")

Texts are cut into chunks; each worker counts a chunk into :class:`NounStats` and the chunks'
stats are merged, which is exact in any order, so the result equals a single counter's. At most
two chunks per worker are in flight, so memory stays bounded for any number of texts (unless
per-caption results are kept).

Each worker pins NumPy's BLAS to ``blas_threads`` threads (1 by default): with one process per
core, more threads only fight over the same cores.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from recaption.errors import ConfigError, RecaptionError
from recaption.nouns.counter import CaptionNouns, NounCounter
from recaption.nouns.options import NounOptions
from recaption.nouns.stats import NounStats

BACKENDS = ("process", "ray")


class WorkerError(RecaptionError, RuntimeError):
    """A worker failed while counting; carries the worker's traceback."""


def set_blas_threads(n: int) -> bool:
    """Limit the OpenBLAS that NumPy uses to ``n`` threads, now (best effort, Linux).

    Environment variables only work before NumPy is imported; this calls OpenBLAS's own setter
    in whichever OpenBLAS this process has loaded. Returns whether one was found.
    """
    import numpy  # noqa: F401 - loads the BLAS library whose threads are set

    found = False
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return False
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in (
            "openblas_set_num_threads",
            "scipy_openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_",
        ):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                found = True
                break
    return found


@dataclass
class ParallelResult:
    """Merged statistics, and the per-caption results in input order when they were kept."""

    stats: NounStats
    captions: list[CaptionNouns] | None
    workers: int
    chunks: int


def _count_chunk(counter: NounCounter, texts: list[Any], keep: bool) -> tuple[NounStats, list | None]:
    results = counter.count(texts)
    stats = NounStats.for_options(counter.fingerprint()).update(results)
    return stats, (results if keep else None)


# -- process backend ------------------------------------------------------------------------------


def _process_worker(options: NounOptions, blas_threads: int, tasks: Any, results: Any) -> None:
    try:
        set_blas_threads(blas_threads)
        counter = NounCounter(options).load()
    except BaseException as exc:
        results.put(("error", -1, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        return
    results.put(("ready", os.getpid(), None))
    while True:
        item = tasks.get()
        if item is None:
            return
        index, texts, keep = item
        try:
            results.put(("done", index, _count_chunk(counter, texts, keep)))
        except BaseException as exc:
            results.put(("error", index, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


class _ProcessBackend:
    def __init__(self, options: NounOptions, workers: int, blas_threads: int) -> None:
        import multiprocessing as mp

        # spawn: a fresh interpreter per worker (no forked BLAS thread pools or Ray state).
        ctx = mp.get_context("spawn")
        self.tasks = ctx.Queue()
        self.results = ctx.Queue()
        self.procs = [
            ctx.Process(
                target=_process_worker,
                args=(options, blas_threads, self.tasks, self.results),
                daemon=True,
                name=f"recaption-nouns-{i}",
            )
            for i in range(workers)
        ]
        for p in self.procs:
            p.start()
        for _ in self.procs:
            kind, _pid, payload = self._get()
            if kind == "error":
                self.close()
                raise WorkerError(f"a noun worker failed to start:\n{payload}")

    def _get(self) -> tuple[str, int, Any]:
        import queue

        while True:
            try:
                return self.results.get(timeout=5.0)
            except queue.Empty:
                dead = [p for p in self.procs if not p.is_alive()]
                if dead:
                    raise WorkerError(
                        f"noun worker {dead[0].name} died (exit code {dead[0].exitcode})"
                    ) from None

    def submit(self, index: int, texts: list[Any], keep: bool) -> None:
        self.tasks.put((index, texts, keep))

    def wait_one(self) -> tuple[int, Any]:
        kind, index, payload = self._get()
        if kind == "error":
            raise WorkerError(f"a noun worker failed on chunk {index}:\n{payload}")
        return index, payload

    def close(self) -> None:
        for _ in self.procs:
            with contextlib.suppress(Exception):
                self.tasks.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)


# -- Ray backend ----------------------------------------------------------------------------------


class _NounActor:
    """One spaCy model per Ray actor."""

    def __init__(self, options: NounOptions, blas_threads: int) -> None:
        set_blas_threads(blas_threads)
        self.counter = NounCounter(options).load()

    def ready(self) -> int:
        return os.getpid()

    def count(self, texts: list[Any], keep: bool) -> tuple[NounStats, list | None]:
        return _count_chunk(self.counter, texts, keep)


class _RayBackend:
    def __init__(self, options: NounOptions, workers: int, blas_threads: int) -> None:
        import ray

        self.ray = ray
        self.started_ray = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            # A cluster when RAY_ADDRESS is set; otherwise a new local Ray with exactly the cores
            # asked for (address="local": never attach to some other local cluster by accident).
            if os.environ.get("RAY_ADDRESS"):
                ray.init()
            else:
                ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
            self.started_ray = True
        actor_cls = ray.remote(num_cpus=1)(_NounActor)
        env = {"OPENBLAS_NUM_THREADS": str(blas_threads), "OMP_NUM_THREADS": str(blas_threads)}
        self.actors: list[Any] = [
            actor_cls.options(runtime_env={"env_vars": env}).remote(options, blas_threads)
            for _ in range(workers)
        ]
        try:
            ray.get([a.ready.remote() for a in self.actors])
        except Exception as exc:
            self.close()
            raise WorkerError(f"a noun worker failed to start: {exc}") from exc
        self.free = list(self.actors)
        self.pending: dict[Any, tuple[int, Any]] = {}

    def submit(self, index: int, texts: list[Any], keep: bool) -> None:
        actor = self.free.pop() if self.free else self.actors[index % len(self.actors)]
        self.pending[actor.count.remote(texts, keep)] = (index, actor)

    def wait_one(self) -> tuple[int, Any]:
        [ref], _ = self.ray.wait(list(self.pending), num_returns=1)
        index, actor = self.pending.pop(ref)
        self.free.append(actor)
        try:
            return index, self.ray.get(ref)
        except Exception as exc:
            raise WorkerError(f"a noun worker failed on chunk {index}: {exc}") from exc

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        self.actors = []
        if self.started_ray:
            self.ray.shutdown()


# -- the pool -------------------------------------------------------------------------------------


class NounPool:
    """``workers`` noun counters in separate processes (or Ray actors), each with its own model.

    Starting loads every worker's model, so timings of :meth:`count` exclude start-up. Use as a
    context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        options: NounOptions | None = None,
        *,
        workers: int = 2,
        backend: str = "process",
        blas_threads: int = 1,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError("backend", backend, BACKENDS)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError("workers", workers, "an integer >= 1")
        self.options = options or NounOptions()
        self.workers = workers
        self.backend_name = backend
        if backend == "ray":
            self._backend: Any = _RayBackend(self.options, workers, blas_threads)
        else:
            self._backend = _ProcessBackend(self.options, workers, blas_threads)

    def count(
        self, texts: Iterable[Any], *, chunk_size: int = 256, keep_captions: bool = False
    ) -> ParallelResult:
        """Count ``texts`` across the workers; merged stats (and per-caption results if kept)."""
        if chunk_size < 1:
            raise ConfigError("chunk_size", chunk_size, "an integer >= 1")
        source = iter(texts)
        chunks: Iterator[list[Any]] = iter(lambda: list(islice(source, chunk_size)), [])
        backend = self._backend
        in_flight = 0
        submitted = 0
        parts: list[NounStats] = []
        kept: dict[int, list[CaptionNouns]] = {}
        for chunk in islice(chunks, 2 * self.workers):
            backend.submit(submitted, chunk, keep_captions)
            submitted += 1
            in_flight += 1
        while in_flight:
            index, (stats, captions) = backend.wait_one()
            in_flight -= 1
            parts.append(stats)
            if keep_captions:
                kept[index] = captions
            for chunk in islice(chunks, 1):
                backend.submit(submitted, chunk, keep_captions)
                submitted += 1
                in_flight += 1
        merged = NounStats.merge_all(parts) if parts else NounStats.for_options(self.options.fingerprint())
        ordered = [c for i in range(submitted) for c in kept[i]] if keep_captions else None
        return ParallelResult(stats=merged, captions=ordered, workers=self.workers, chunks=submitted)

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> NounPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def count_texts_parallel(
    texts: Iterable[Any],
    options: NounOptions | None = None,
    *,
    workers: int = 2,
    backend: str = "process",
    chunk_size: int = 256,
    keep_captions: bool = False,
) -> ParallelResult:
    """Start a :class:`NounPool`, count ``texts``, and stop it."""
    with NounPool(options, workers=workers, backend=backend) as pool:
        return pool.count(texts, chunk_size=chunk_size, keep_captions=keep_captions)
