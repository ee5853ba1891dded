"""Prepare batch k+1 on the CPU while the accelerator works on batch k.

:func:`prefetch_batches` reads items from an iterator in a background thread, prepares each item
in a small thread pool (decoding and resizing: Pillow releases the GIL for most of that work),
collates the prepared items of a batch (the processor call, also mostly GIL-free), and hands the
batches over through a bounded queue. Memory stays bounded: at most ``depth`` finished batches
wait in the queue, plus the one being prepared and the one the consumer holds.

One item that fails to prepare does not fail its batch: its error comes back in
:attr:`PreparedBatch.errors` and the others go on. An exception raised by the *iterator itself*
is a broken source, not a bad item: it is re-raised in the consumer.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
V = TypeVar("V")

_END = object()


@dataclass
class PreparedBatch(Generic[T, V]):
    """One batch: the items in input order, each item's prepared value or error, and the collation."""

    index: int
    items: list[T]
    values: list[V | None]
    errors: list[str | None]
    collated: Any = None  # what ``collate`` returned for the items that prepared without error
    collate_error: str | None = None
    ok_positions: list[int] = field(default_factory=list)  # positions in ``items`` that ``collated`` covers


@dataclass
class _SourceFailure:
    error: BaseException


def describe_error(e: BaseException) -> str:
    """A one-line reason: the ``reason`` of recaption's decode errors, else ``Type: message``."""
    reason = getattr(e, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    msg = str(e)
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def prefetch_batches(
    items: Iterable[T],
    prepare_item: Callable[[T], V],
    batch_size: int,
    *,
    collate: Callable[[list[V]], Any] | None = None,
    workers: int = 4,
    depth: int = 2,
) -> Iterator[PreparedBatch[T, V]]:
    """Yield :class:`PreparedBatch` es of up to ``batch_size`` items, prepared ahead in the background.

    ``prepare_item`` runs on ``workers`` threads; ``collate`` (if given) runs once per batch on
    the successful values, in the background thread as well. Closing the generator early stops
    the background work.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(obj: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run_one(item: T) -> tuple[V | None, str | None]:
        try:
            return prepare_item(item), None
        except Exception as e:
            return None, describe_error(e)

    def build(index: int, chunk: list[T], pool: ThreadPoolExecutor) -> PreparedBatch[T, V]:
        outs = list(pool.map(run_one, chunk)) if workers > 1 else [run_one(x) for x in chunk]
        batch: PreparedBatch[T, V] = PreparedBatch(
            index=index, items=chunk, values=[v for v, _ in outs], errors=[e for _, e in outs]
        )
        batch.ok_positions = [i for i, e in enumerate(batch.errors) if e is None]
        if collate is not None and batch.ok_positions:
            try:
                batch.collated = collate([batch.values[i] for i in batch.ok_positions])  # type: ignore[misc]
            except Exception as e:
                batch.collate_error = describe_error(e)
        return batch

    def producer() -> None:
        try:
            with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="prefetch") as pool:
                chunk: list[T] = []
                index = 0
                for item in items:
                    if stop.is_set():
                        return
                    chunk.append(item)
                    if len(chunk) == batch_size:
                        if not put(build(index, chunk, pool)):
                            return
                        chunk, index = [], index + 1
                if chunk and not stop.is_set() and not put(build(index, chunk, pool)):
                    return
        except BaseException as e:  # the source itself broke: hand it to the consumer
            put(_SourceFailure(e))
            return
        put(_END)

    thread = threading.Thread(target=producer, name="prefetch-producer", daemon=True)
    thread.start()
    try:
        while True:
            obj = q.get()
            if obj is _END:
                return
            if isinstance(obj, _SourceFailure):
                raise obj.error
            yield obj
    finally:
        stop.set()
        # Unblock a producer waiting on a full queue, then let it finish its current batch.
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.1)
        thread.join()
