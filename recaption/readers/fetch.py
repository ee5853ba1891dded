"""Reading many small files a window at a time, so loose files on an object store are not read
one request after another (200 objects were 3-4 s on a loopback S3, one request at a time).

A :class:`WindowReader` is given the files of a shard in the order they will be used. Reading one
starts the reads of the next ``window`` on a thread pool (fsspec filesystems, s3fs included, may be
called from several threads), so by the time the consumer reaches a file its bytes are usually in
hand. Order and per-file errors are kept: ``get(i)`` returns file i's bytes or raises its error.
Files marked lazy (images) are read only once the consumer has asked for one of them, so a pass
that uses captions alone never downloads the images. ``window`` 1 reads one file at a time, in
this thread: the old sequential path, kept for comparison (``RECAPTION_READ_WINDOW=1``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from recaption import io

DEFAULT_WINDOW = 32  # files in flight per reader: enough to hide ~30 ms object-store latency


def default_window() -> int:
    """``RECAPTION_READ_WINDOW`` when set (1: sequential), else :data:`DEFAULT_WINDOW`."""
    try:
        return max(1, int(os.environ.get("RECAPTION_READ_WINDOW", DEFAULT_WINDOW)))
    except ValueError:
        return DEFAULT_WINDOW


class WindowReader:
    """Reads ``urls`` ahead of use; ``lazy`` positions wait until one of them is asked for."""

    def __init__(
        self, urls: list[str], window: int | None = None, lazy: frozenset[int] = frozenset()
    ) -> None:
        self.urls = urls
        self.window = window or default_window()
        self.lazy = lazy
        self._lazy_wanted = False
        self._futures: dict[int, Future[bytes]] = {}
        self._done: set[int] = set()
        self._pool: ThreadPoolExecutor | None = None
        # decode threads ask for images concurrently (the captioner's prefetch): guard the bookkeeping
        self._lock = threading.Lock()
        if self.window > 1 and len(urls) > 1:
            self._pool = ThreadPoolExecutor(
                max_workers=min(self.window, len(urls)), thread_name_prefix="read"
            )

    def __enter__(self) -> WindowReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading ahead (reads in flight finish in the background and are dropped); files
        asked for later are read directly."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            self._futures.clear()

    def _read_ahead(self, i: int) -> None:
        if self._pool is None:
            return
        for j in range(i, min(len(self.urls), i + self.window)):
            if j in self._futures or j in self._done or (j in self.lazy and not self._lazy_wanted):
                continue
            self._futures[j] = self._pool.submit(io.read_bytes, self.urls[j])
        # reads the consumer went past without using (images of a captions-only pass): drop them
        for j in [j for j in self._futures if j < i - self.window]:
            self._futures.pop(j).cancel()

    def get(self, i: int) -> bytes:
        """File ``i``'s bytes; raises what reading it raised (``FileNotFoundError``...)."""
        with self._lock:
            if i in self.lazy:
                self._lazy_wanted = True
            self._read_ahead(i)
            self._done.add(i)
            future = self._futures.pop(i, None)
        if future is None or future.cancelled():
            return io.read_bytes(self.urls[i])
        return future.result()

    def getter(self, i: int) -> Callable[[], bytes]:
        """A function returning file ``i``'s bytes (a sample's image, read when it is used)."""
        return lambda: self.get(i)
