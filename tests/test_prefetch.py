from __future__ import annotations

import threading
import time

import pytest

from recaption.images.decode import DecodeError
from recaption.prefetch import describe_error, prefetch_batches


def test_batches_keep_order_and_size():
    batches = list(prefetch_batches(range(10), lambda x: x * 10, 4, collate=sum))
    assert [b.items for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [b.values for b in batches][2] == [80, 90]
    assert [b.collated for b in batches] == [60, 220, 170]
    assert [b.index for b in batches] == [0, 1, 2]


def test_one_bad_item_does_not_fail_its_batch():
    def prepare(x: int) -> int:
        if x == 2:
            raise DecodeError("truncated image: the file ends before the image data does")
        if x == 5:
            raise ValueError("bad value")
        return x

    batches = list(prefetch_batches(range(6), prepare, 3, collate=list))
    first, second = batches
    assert first.errors == [None, None, "truncated image: the file ends before the image data does"]
    assert first.ok_positions == [0, 1]
    assert first.collated == [0, 1]
    assert second.errors == [None, None, "ValueError: bad value"]
    assert second.collated == [3, 4]


def test_collate_error_is_reported_not_raised():
    def collate(values: list[int]) -> int:
        raise RuntimeError("processor failed")

    (batch,) = prefetch_batches([1, 2], lambda x: x, 4, collate=collate)
    assert batch.collated is None
    assert batch.collate_error == "RuntimeError: processor failed"


def test_all_items_failing_skips_collate():
    calls = []
    (batch,) = prefetch_batches([1, 2], lambda x: 1 / 0, 4, collate=calls.append)
    assert calls == []
    assert batch.ok_positions == []
    assert all(e.startswith("ZeroDivisionError") for e in batch.errors)


def test_a_broken_source_is_raised_in_the_consumer():
    def source():
        yield 1
        yield 2
        raise OSError("listing failed")

    it = prefetch_batches(source(), lambda x: x, 1)
    assert next(it).items == [1]
    assert next(it).items == [2]
    with pytest.raises(OSError, match="listing failed"):
        next(it)


def test_memory_is_bounded_by_depth():
    produced = []
    lock = threading.Lock()

    def prepare(x: int) -> int:
        with lock:
            produced.append(x)
        return x

    it = prefetch_batches(range(1000), prepare, 10, depth=2, workers=2)
    next(it)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and len(produced) < 40:
        time.sleep(0.01)
    time.sleep(0.1)
    # one batch held by the consumer, `depth` queued, one being prepared: never the whole input
    assert len(produced) <= 10 * (1 + 2 + 1)
    it.close()


def test_closing_early_stops_the_producer():
    it = prefetch_batches(iter(range(10**9)), lambda x: x, 8, depth=1)
    next(it)
    assert any(t.name == "prefetch-producer" for t in threading.enumerate())
    it.close()  # joins the producer
    assert not [t for t in threading.enumerate() if t.name == "prefetch-producer"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        list(prefetch_batches([1], lambda x: x, 0))
    with pytest.raises(ValueError, match="depth"):
        list(prefetch_batches([1], lambda x: x, 1, depth=0))


def test_describe_error():
    assert describe_error(DecodeError("empty file (0 bytes)")) == "empty file (0 bytes)"
    assert describe_error(KeyError("k")) == "KeyError: 'k'"
    assert describe_error(RuntimeError()) == "RuntimeError"
