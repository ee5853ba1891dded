"""Progress within a shard: per-batch counts, images/s, ETAs of the stage and the run, log lines
at an interval outside a terminal (fake clock), and the counts from Ray actors to the driver."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from recaption.readers.base import InputShard
from recaption.runner.progress import ProgressGroup, format_duration
from recaption.shards.writer import ShardOutput
from recaption.stage import Stage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def shards(n: int, size: int) -> list[InputShard]:
    return [InputShard(index=i, uri="x", start=i * size, stop=(i + 1) * size) for i in range(n)]


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "recaption"]


def test_eta_of_the_stage_from_rate_and_shard_sizes(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="recaption")
    clock = Clock()
    group = ProgressGroup(False, interval=30, clock=clock, heartbeat=False)
    # 4 shards of 10 images, shard 0 done by an earlier run
    st = group.stage("caption", 4, 1, shards(4, 10)[1:])
    assert st.eta() is None  # no rate yet
    st.shard_started(1)
    clock.now += 10
    st.advance(1, 5)
    # 5 images in 10 s: 0.5/s; left: 5 of shard 1 + 2 shards × 10 = 25 → 50 s
    assert st.rate() == pytest.approx(0.5)
    assert st.remaining() == pytest.approx(25)
    assert st.eta() == pytest.approx(50)
    assert group.run_eta() == (pytest.approx(50), False)
    assert format_duration(st.eta()) == "50s"
    clock.now += 10
    st.shard_done({"shard": 1, "rows": 10, "errors": 0, "warnings": 0, "seconds": 20})
    # 10 images in 20 s; 2 shards of 10 left → 40 s
    assert st.eta() == pytest.approx(40)
    assert "[caption] shard 1 done: 10 rows" in messages(caplog)[-1]
    assert "2/4 shards; 10 images, 0.5 images/s, ETA 40s (run 40s)" in messages(caplog)[-1]


def test_eta_without_size_hints_uses_the_shards_done():
    clock = Clock()
    group = ProgressGroup(False, clock=clock, heartbeat=False)
    st = group.stage("encode", 3, 0, [InputShard(index=i, uri=f"part-{i}") for i in range(3)])
    st.shard_started(0)
    clock.now += 4
    st.advance(0, 8)
    assert st.eta() is None  # how big a shard is: unknown until one is done
    st.shard_done({"shard": 0, "rows": 20})
    st.shard_started(1)
    clock.now += 6
    st.advance(1, 5)
    # 25 images in 10 s; shards of 20: 15 left in shard 1 + 20 → 35 / 2.5 = 14 s
    assert st.eta() == pytest.approx(14)


def test_run_eta_overlapping_and_sequential():
    clock = Clock()
    for sequential, expected in ((False, 20), (True, 30)):
        group = ProgressGroup(False, clock=clock, heartbeat=False, sequential=sequential)
        a = group.stage("caption", 1, 0, shards(1, 10))
        b = group.stage("encode", 1, 0, shards(1, 10))
        a.shard_started(0)
        b.shard_started(0)
        clock.now += 10
        a.advance(0, 5)  # 5 left at 0.5/s: 10 s
        b.advance(0, 3)  # 7 left at 0.3/s: 23.3 s
        eta, partial = group.run_eta()
        assert not partial
        assert (
            eta == pytest.approx(expected + 3.333, abs=0.01)
            if sequential
            else eta == pytest.approx(23.333, abs=0.01)
        )
    # a stage not started yet: the run's ETA is a lower bound
    group = ProgressGroup(False, clock=clock, heartbeat=False, sequential=True, expected_stages=2)
    a = group.stage("caption", 1, 0, shards(1, 10))
    a.shard_started(0)
    clock.now += 10
    a.advance(0, 5)
    assert group.run_eta() == (pytest.approx(10), True)
    assert group.run_eta_text() == "≥10s"


def test_log_lines_at_the_interval_within_a_shard(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="recaption")
    clock = Clock()
    group = ProgressGroup(False, interval=30, clock=clock, heartbeat=False)
    st = group.stage("caption", 2, 0, shards(2, 100))
    st.shard_started(0)
    for _ in range(5):  # a batch of 4 every 10 s
        clock.now += 10
        st.advance(0, 4)
    lines = messages(caplog)
    # at 30 s; at 40 and 50 s not yet: one line, with the shard's count so far
    assert len(lines) == 1
    assert lines[0].startswith(
        "[caption] 0/2 shards (shard 0: 12); 12 images, 0.4 images/s, ETA 7m50s"
    )  # 188 left / 0.4
    # a slow batch: the heartbeat's tick logs anyway, 30 s after the last line (at 30 s)
    clock.now += 9  # 59 s
    group.tick()
    assert len(messages(caplog)) == 1
    clock.now += 1
    group.tick()
    assert len(messages(caplog)) == 2
    assert "(shard 0: 20)" in messages(caplog)[-1]
    # a late report for a shard that is not running is ignored
    st.advance(1, 50)
    assert st.samples() == 20


@dataclass
class BatchStage(Stage):
    """``n`` rows per shard in batches of ``batch``, ``pause`` seconds each; reports per batch."""

    name = "batches"
    n_shards: int = 2
    n: int = 6
    batch: int = 2
    pause: float = 0.0

    def schema(self) -> Any:
        import pyarrow as pa

        return pa.schema([pa.field("key", pa.string())])

    def fingerprint(self) -> dict[str, Any]:
        return {"n": self.n}

    def shards(self) -> list[InputShard]:
        return [InputShard(index=i, uri="mem", start=0, stop=self.n) for i in range(self.n_shards)]

    def process_shard(self, shard: InputShard, out: ShardOutput) -> dict[str, Any]:
        for b in range(0, self.n, self.batch):
            time.sleep(self.pause)
            out.write([{"key": f"{shard.index}-{k}"} for k in range(b, b + self.batch)])
            out.progress(self.batch)
        return {}


class Recording(ProgressGroup):
    """Records every (stage, shard, samples so far) the runner reports within shards."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(False, heartbeat=False, **kw)
        self.seen: list[tuple[str, int, int]] = []

    def stage(self, name: str, total: int, skipped: int, shards: list[Any] | None = None) -> Any:
        st = super().stage(name, total, skipped, shards)
        advance = st.advance

        def recording(index: int, n: int) -> None:
            advance(index, n)
            self.seen.append((name, index, st.inflight.get(index, -1)))

        st.advance = recording  # type: ignore[method-assign]
        return st


def test_local_runner_reports_each_batch(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from recaption.runner.local import run_local

    caplog.set_level(logging.INFO, logger="recaption")
    group = Recording(interval=0.0)  # a line at every report
    summary = run_local(BatchStage(), str(tmp_path / "out"), progress=group)
    assert summary.rows == 12
    assert group.seen == [("batches", 0, 2), ("batches", 0, 4), ("batches", 0, 6)] + [
        ("batches", 1, 2),
        ("batches", 1, 4),
        ("batches", 1, 6),
    ]
    lines = messages(caplog)
    first_done = next(i for i, m in enumerate(lines) if "shard 0 done" in m)
    assert any("(shard 0: 4)" in m for m in lines[:first_done])  # a line from inside the shard


def test_ray_actors_report_to_the_driver(local_ray, tmp_path: Path):
    from recaption.runner.ray import RayOptions, run_ray

    group = Recording()
    # 4 batches of 0.6 s per shard: the worker reports about once a second, the driver polls as often
    summary = run_ray(
        BatchStage(n_shards=1, n=8, batch=2, pause=0.6),
        str(tmp_path / "out"),
        RayOptions(num_workers=1),
        progress=group,
    )
    assert summary.rows == 8
    within = [n for stage, shard, n in group.seen if (stage, shard) == ("batches", 0)]
    assert within, "no progress reached the driver before the shard was done"
    assert 0 < within[0] < 8
