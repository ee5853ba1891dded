"""SIGTERM or Ctrl-C at any moment of a shard's writing: the shard in hand is dropped whole, no
temporary file stays behind, and the rerun gives the undisturbed output.

A signal usually lands while the process is inside a system call; Python raises the handler's
``KeyboardInterrupt`` the moment the call returns. The tests deliver a real SIGTERM right after
each file-system call of a shard returns (the file created, closed or renamed), which is where
the CLI's SIGTERM test left ``.part-00005.parquet.tmp-…`` behind one run in three.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.local import LocalFileOpener

from recaption import interrupts, io
from recaption.runner import run_local
from recaption.runner.base import prepare_output, run_shard
from recaption.shards.layout import StageDir
from tests.s3.stages import BlobStage


@pytest.fixture
def handlers() -> Iterator[None]:
    """The CLI's handlers (SIGTERM and Ctrl-C raise ``KeyboardInterrupt``), put back after."""
    previous = interrupts.install()
    try:
        yield
    finally:
        interrupts.restore(previous)


class SignalAfter:
    """Wrap file-system calls; right after the ``k``-th returns, SIGTERM this process."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.calls: list[str] = []

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*a: Any, **kw: Any) -> Any:
            result = fn(*a, **kw)
            self.calls.append(name)
            if len(self.calls) == self.k:
                signal.raise_signal(signal.SIGTERM)  # handled at the next bytecode: here
            return result

        return call


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if io.is_tmp(p.name))


def test_a_signal_after_any_file_call_of_a_shard_leaves_no_temporary_file(
    tmp_path: Path, handlers: None, monkeypatch: pytest.MonkeyPatch
):
    """Catches: creating a temporary file and noting it for clean-up as two steps (the writer's
    data file, ``atomic_open``'s markers, ``run_shard``'s output object): an interrupt between them
    left the file on disk."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "00000.bin").write_bytes(b"seed")
    stage = BlobStage(inputs=(str(src / "00000.bin"),), rows=3, nbytes=1000)
    ref = str(tmp_path / "ref")
    assert run_local(stage, ref, progress=False).ok
    ref_bytes = io.read_bytes(StageDir(ref).data(0))
    shard = stage.shards()[0]

    interrupted = 0
    k = 1
    while True:
        out = tmp_path / f"out-{k}"
        prepare_output(stage, str(out), stage.shards())
        sig = SignalAfter(k)
        with monkeypatch.context() as m:
            m.setattr(LocalFileOpener, "_open", sig.wrap("open", LocalFileOpener._open))
            m.setattr(LocalFileOpener, "close", sig.wrap("close", LocalFileOpener.close))
            m.setattr(os, "replace", sig.wrap("replace", os.replace))
            try:
                run_shard(stage, shard, str(out))
                stopped = False
            except KeyboardInterrupt:
                stopped = True
        if not stopped:
            assert len(sig.calls) < k  # the whole shard ran before the k-th call: every point tried
            break
        interrupted += 1
        at = f"SIGTERM after call {k} ({sig.calls[k - 1]})"
        assert _leftovers(out) == [], at
        sd = StageDir(str(out))
        if 0 in sd.done_indices():  # the signal came after the marker: the shard is whole
            assert io.read_bytes(sd.data(0)) == ref_bytes, at
        assert run_local(stage, str(out), progress=False).ok, at
        assert io.read_bytes(sd.data(0)) == ref_bytes, at
        assert _leftovers(out) == [], at
        k += 1
    assert interrupted >= 8  # progress marker, data file, failures, side output, stats: opened,
    # closed and renamed each


def _held(signum: int, steps: list[str]) -> None:
    """A signal inside nested windows: the rest of both runs, then the interrupt."""
    with interrupts.deferred():
        signal.raise_signal(signum)
        steps.append("after the signal")
        with interrupts.deferred():  # nested: held until the outermost window closes
            steps.append("inner")
        steps.append("outer end")


def _unheld(steps: list[str]) -> None:
    signal.raise_signal(signal.SIGTERM)
    steps.append("never")


def test_a_signal_inside_a_deferred_window_is_raised_when_it_closes(handlers: None):
    """Catches: a held signal lost (never raised), or raised inside the window."""
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        _held(signal.SIGTERM, steps)
    assert steps == ["after the signal", "inner", "outer end"]
    with interrupts.deferred():  # nothing pending: nothing raised
        steps.append("quiet")
    with pytest.raises(KeyboardInterrupt):  # outside a window: at once
        _unheld(steps)
    assert steps[-1] == "quiet"


def test_ctrl_c_is_held_too_but_a_programs_own_handler_is_kept():
    """Catches: only SIGTERM deferred (Ctrl-C, Python's default handler, raises at once) and
    replacing a handler the host program set for SIGINT."""
    steps: list[str] = []
    previous = interrupts.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            _held(signal.SIGINT, steps)
    finally:
        interrupts.restore(previous)
    assert steps == ["after the signal", "inner", "outer end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def own(signum: int, frame: Any) -> None:
        pass

    before = signal.signal(signal.SIGINT, own)
    try:
        previous = interrupts.install()
        assert signal.getsignal(signal.SIGINT) is own
        interrupts.restore(previous)
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_signal_while_a_lease_is_created_leaves_a_readable_lease(
    tmp_path: Path, handlers: None, monkeypatch: pytest.MonkeyPatch
):
    """Catches: the lease file created and written as two steps (an interrupt between them left an
    empty ``_lease.json``, which a rerun must treat as live until the lease timeout)."""
    url = str(tmp_path / "_lease.json")
    sig = SignalAfter(1)
    monkeypatch.setattr(os, "open", sig.wrap("os.open", os.open))
    with pytest.raises(KeyboardInterrupt):
        io.create_exclusive(url, b'{"pid": 1}')
    monkeypatch.undo()
    assert json.loads(Path(url).read_text()) == {"pid": 1}
