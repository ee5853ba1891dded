"""Output files split at a target size: the plan, the streaming writer, resume and clean-up."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recaption.errors import ConfigError
from recaption.readers.base import InputShard
from recaption.shards.layout import PART_RE, StageDir, part_name
from recaption.shards.size import Chunker, ShardSizePolicy, row_nbytes
from recaption.shards.writer import ShardOutput

SCHEMA = pa.schema([("key", pa.string()), ("blob", pa.binary()), ("n", pa.int32())])


def _rows(sizes: list[int]) -> list[dict]:
    return [{"key": f"{i:04d}", "blob": b"x" * s, "n": i} for i, s in enumerate(sizes)]


def _write(
    out_dir: Path, rows: list[dict], batch: int, policy: ShardSizePolicy | None, index: int = 3
) -> dict:
    out = ShardOutput(
        StageDir(str(out_dir)), InputShard(index=index, uri="x"), SCHEMA, stage="t", size_policy=policy
    )
    for a in range(0, len(rows), batch):
        out.write(rows[a : a + batch])
    return out.commit()


def test_chunker_matches_plan_for_any_batching():
    rng = random.Random(0)
    sizes = [rng.randint(1, 120) for _ in range(200)]
    for policy in (ShardSizePolicy(max_rows=7), ShardSizePolicy(max_bytes=500), ShardSizePolicy(7, 300)):
        plan = policy.plan(sizes)
        assert plan[0][0] == 0 and plan[-1][1] == len(sizes)
        for (a, b), (c, _) in itertools.pairwise(plan):
            assert b == c
            assert b - a <= (policy.max_rows or 10**9)
            assert sum(sizes[a:b]) <= (policy.max_bytes or 10**9)
        for batch in (1, 5, 64):
            chunker, starts, pos = Chunker(policy), [0], 0
            for i in range(0, len(sizes), batch):
                for a, _, new in chunker.split(sizes[i : i + batch]):
                    if new:
                        starts.append(pos + a)
                pos += len(sizes[i : i + batch])
            assert starts == [a for a, _ in plan], (policy, batch)


def test_a_row_over_the_byte_target_gets_a_file_alone():
    assert ShardSizePolicy(max_bytes=100).plan([10, 500, 10, 10]) == [(0, 1), (1, 2), (2, 4)]


def test_row_nbytes_counts_values_and_fixed_widths():
    t = pa.Table.from_pylist(_rows([10, 0, 25]), schema=SCHEMA)
    # key: 4 chars, blob: its length, n: 4 bytes
    assert row_nbytes(t) == [18, 8, 33]
    assert row_nbytes(t, ["blob"]) == [10, 0, 25]


def test_split_shard_files_names_stats_and_rows(tmp_path: Path):
    rows = _rows([100] * 23)
    stats = _write(tmp_path, rows, batch=4, policy=ShardSizePolicy(max_rows=10, split="files"))
    names = sorted(p.name for p in tmp_path.glob("part-*"))
    assert names == ["part-00003-000.parquet", "part-00003-001.parquet", "part-00003-002.parquet"]
    assert stats["files"] == names and stats["rows"] == 23
    assert stats["data_bytes"] == sum((tmp_path / n).stat().st_size for n in names)
    assert [pq.read_metadata(tmp_path / n).num_rows for n in names] == [10, 10, 3]
    back = pa.concat_tables(pq.read_table(tmp_path / n) for n in names)
    assert back.column("key").to_pylist() == [r["key"] for r in rows]
    sd = StageDir(str(tmp_path))
    assert [Path(u).name for u in sd.shard_files(3)] == names
    assert sd.done_indices() == {3}
    assert all(int(PART_RE.match(n).group(1)) == 3 for n in names)  # type: ignore[union-attr]
    # the layout's names are the size module's
    assert Path(sd.data(3, part=2)).name == part_name(3, part=2) == names[2]


def test_byte_target_bounds_each_file(tmp_path: Path):
    rows = _rows([1000] * 30)
    _write(tmp_path, rows, batch=7, policy=ShardSizePolicy(max_bytes=8 * 1024, split="files"))
    files = sorted(tmp_path.glob("part-*"))
    assert len(files) == 4  # 8 rows of ~1 KB per file
    assert [pq.read_metadata(f).num_rows for f in files] == [8, 8, 8, 6]


def test_same_files_whatever_the_batches(tmp_path: Path):
    rng = random.Random(1)
    rows = _rows([rng.randint(50, 400) for _ in range(40)])
    policy = ShardSizePolicy(max_bytes=2000, split="files")
    layouts = []
    for batch in (1, 6, 40):
        d = tmp_path / str(batch)
        _write(d, rows, batch, policy)
        layouts.append({f.name: pq.read_table(f).column("key").to_pylist() for f in sorted(d.glob("part-*"))})
    assert layouts[0] == layouts[1] == layouts[2]


def test_row_group_mode_keeps_one_file(tmp_path: Path):
    stats = _write(tmp_path, _rows([10] * 25), batch=25, policy=ShardSizePolicy(max_rows=10))
    assert [p.name for p in tmp_path.glob("part-*")] == ["part-00003.parquet"]
    md = pq.read_metadata(tmp_path / "part-00003.parquet")
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [10, 10, 5]
    assert stats["files"] == ["part-00003.parquet"]  # the marker lists the one file


def test_empty_split_shard_still_gets_a_file(tmp_path: Path):
    stats = _write(tmp_path, [], batch=1, policy=ShardSizePolicy(max_rows=10, split="files"))
    assert stats["files"] == ["part-00003-000.parquet"] and stats["rows"] == 0
    assert pq.read_table(tmp_path / "part-00003-000.parquet").num_rows == 0


def test_rerun_removes_what_an_interrupted_attempt_left(tmp_path: Path):
    """An attempt that renamed some files but died before its stats left files of another split
    (or the unsplit file): the next commit of that shard removes them and touches no other shard."""
    for stale in ("part-00003.parquet", "part-00003-004.parquet", "part-00004-000.parquet"):
        (tmp_path / stale).write_bytes(b"old")
    _write(tmp_path, _rows([10] * 12), batch=5, policy=ShardSizePolicy(max_rows=5, split="files"))
    assert sorted(p.name for p in tmp_path.glob("part-*")) == [
        "part-00003-000.parquet",
        "part-00003-001.parquet",
        "part-00003-002.parquet",
        "part-00004-000.parquet",
    ]


def test_abort_leaves_nothing_visible(tmp_path: Path):
    out = ShardOutput(
        StageDir(str(tmp_path)),
        InputShard(index=0, uri="x"),
        SCHEMA,
        stage="t",
        size_policy=ShardSizePolicy(max_rows=2, split="files"),
    )
    out.write(_rows([5] * 7))
    out.abort()
    assert list(tmp_path.rglob("*.parquet*")) == []


def test_memory_filesystem(tmp_path: Path):
    import fsspec

    url = "memory://size-test/out"
    out = ShardOutput(
        StageDir(url),
        InputShard(index=1, uri="x"),
        SCHEMA,
        stage="t",
        size_policy=ShardSizePolicy(3, split="files"),
    )
    out.write(_rows([1] * 7))
    stats = out.commit()
    assert stats["files"] == ["part-00001-000.parquet", "part-00001-001.parquet", "part-00001-002.parquet"]
    fs = fsspec.filesystem("memory")
    assert json.loads(fs.cat(f"{url}/_stats/part-00001.json"))["rows"] == 7
    fs.rm("/size-test", recursive=True)


def test_bad_targets_name_the_option():
    with pytest.raises(ConfigError, match="max rows per file"):
        ShardSizePolicy(max_rows=0)
    with pytest.raises(ConfigError, match="row_groups"):
        ShardSizePolicy(split="bytes")


def test_a_started_shard_shows_in_progress_before_its_first_rows(tmp_path: Path):
    from recaption.status import stage_status

    (tmp_path / "_stage.json").write_text(json.dumps({"stage": "t", "shards": 5}))
    out = ShardOutput(StageDir(str(tmp_path)), InputShard(index=3, uri="x"), SCHEMA, stage="t")
    st = stage_status(str(tmp_path))
    assert st["shards_in_progress"] == [3]
    # how long since it was written: a killed run's leftovers grow old, a live one's stay fresh
    assert 0 <= st["in_progress_idle_seconds"]["3"] < 60
    out.abort()
    assert stage_status(str(tmp_path))["shards_in_progress"] == []
