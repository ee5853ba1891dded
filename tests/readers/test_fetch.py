"""Loose files are read a window ahead, concurrently, in order, each with its own error; images are
read only when a consumer asks for them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from recaption import io
from recaption.readers import Sample, open_source
from recaption.readers.fetch import WindowReader
from tests.builders import image_bytes


class Recorder:
    """Wraps ``io.read_bytes``: which files were read, and how many reads were in flight at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.read: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        real = io.read_bytes

        def slow_read(url: str, *a, **kw) -> bytes:
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                self.read.append(url)
            try:
                time.sleep(0.02)  # an object store's latency: reads overlap only if issued together
                return real(url, *a, **kw)
            finally:
                with self._lock:
                    self.in_flight -= 1

        monkeypatch.setattr(io, "read_bytes", slow_read)


def _folder(tmp_path: Path, n: int) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(n):
        (d / f"{i:03d}.jpg").write_bytes(image_bytes(32, 24, seed=i))
        (d / f"{i:03d}.txt").write_text(f"caption {i}")
    return d


def test_window_reader_keeps_order_and_each_files_error(tmp_path: Path, monkeypatch):
    rec = Recorder(monkeypatch)
    urls = []
    for i in range(12):
        p = tmp_path / f"f{i}"
        if i != 5:
            p.write_bytes(f"file {i}".encode())
        urls.append(str(p))
    with WindowReader(urls, window=8) as r:
        for i in range(12):
            if i == 5:
                with pytest.raises(FileNotFoundError):
                    r.get(i)
            else:
                assert r.get(i) == f"file {i}".encode()
    assert rec.max_in_flight > 1
    assert sorted(rec.read) == sorted(urls)  # each file read once


def test_folder_reads_overlap_and_the_sequential_path_stays_selectable(tmp_path: Path, monkeypatch):
    d = _folder(tmp_path, 20)
    rec = Recorder(monkeypatch)
    samples = [s for s in open_source(str(d)).iter_samples() if isinstance(s, Sample)]
    assert [s.caption for s in samples] == [f"caption {i}" for i in range(20)]
    assert [s.image_bytes() for s in samples] == [(d / f"{i:03d}.jpg").read_bytes() for i in range(20)]
    assert rec.max_in_flight > 1
    rec.max_in_flight = 0
    monkeypatch.setenv("RECAPTION_READ_WINDOW", "1")
    samples = []
    for s in open_source(str(d)).iter_samples():
        assert isinstance(s, Sample)
        s.image_bytes()
        samples.append(s)
    assert len(samples) == 20 and rec.max_in_flight == 1


def test_a_captions_only_pass_never_reads_the_images(tmp_path: Path, monkeypatch):
    d = _folder(tmp_path, 10)
    rec = Recorder(monkeypatch)
    captions = [s.caption for s in open_source(str(d)).iter_samples() if isinstance(s, Sample)]
    assert len(captions) == 10
    assert rec.read and not [u for u in rec.read if u.endswith(".jpg")]


def test_an_image_gone_since_the_listing_is_a_failure_of_that_image(tmp_path: Path):
    from recaption.inspector import inspect_source

    d = _folder(tmp_path, 4)
    src = open_source(str(d))
    (d / "002.jpg").unlink()
    report = inspect_source(src)
    assert report["samples_ok"] == 3
    (f,) = report["failures"]
    assert f["key"] == "002" and "image no longer exists" in f["reason"]
