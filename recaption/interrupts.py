"""Interrupts (Ctrl-C, SIGTERM) that wait out a few lines of bookkeeping.

A run stops on SIGTERM (a pre-empted node, a stopped job) as on Ctrl-C: ``KeyboardInterrupt`` is
raised, the shard in hand is aborted (its temporary files removed) and the finished shards stay for
the rerun. Python runs a signal handler at the first bytecode after the signal arrives, and a
process writing shards spends much of its time in system calls: a signal that lands during the
``open()`` of a temporary file is raised the moment ``open()`` returns, before any code can note the
file for clean-up, so it stayed on disk (one interrupted ``recaption index`` in three left one,
SIGTERM sent at a random moment).

:func:`deferred` marks such a window (create a file and record it): a signal arriving inside is held
and raised when the window closes, so the code after it sees the file it must remove.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class _State:
    depth = 0  # open deferred() windows of the main thread (signal handlers run only there)
    pending = False


_state = _State()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def raise_interrupt(signum: int, frame: Any) -> None:
    """The handler for SIGTERM and SIGINT: ``KeyboardInterrupt`` now, or when the open
    :func:`deferred` window closes."""
    if _state.depth:
        _state.pending = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold interrupts until the block ends (then raise one if it arrived). Keep blocks short:
    a file's creation and its registration, never a shard's work."""
    if not _in_main_thread():  # handlers never run in other threads: nothing to hold
        yield
        return
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if not _state.depth and _state.pending:
            _state.pending = False
            raise KeyboardInterrupt


def install() -> dict[int, Any]:
    """Make SIGTERM and Ctrl-C raise ``KeyboardInterrupt`` through :func:`raise_interrupt`.

    Returns the handlers replaced (for :func:`restore`); nothing is installed outside the main
    thread, where Python cannot set handlers. Ctrl-C is taken only from Python's default handler:
    a program that set its own keeps it.
    """
    if not _in_main_thread():
        return {}
    previous: dict[int, Any] = {signal.SIGTERM: signal.signal(signal.SIGTERM, raise_interrupt)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, raise_interrupt)
    return previous


def restore(previous: dict[int, Any]) -> None:
    """Put back the handlers :func:`install` replaced."""
    for signum, handler in previous.items():
        if handler is not None:
            signal.signal(signum, handler)
