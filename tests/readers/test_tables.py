"""Caption tables: a bad line costs only itself, a file that is no table is one failure, and
big tables are cut into bounded shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recaption.cli import app
from recaption.readers import Failure, Sample, open_source
from recaption.readers.table import DEFAULT_TABLE_SHARD_ROWS

runner = CliRunner()


def _read(path: Path, **kw) -> tuple[list[Sample], list[Failure]]:
    items = list(open_source(str(path), **kw).iter_samples())
    return [s for s in items if isinstance(s, Sample)], [f for f in items if isinstance(f, Failure)]


@pytest.mark.parametrize("bad_at", [0, 2, 5])
def test_a_malformed_json_line_is_one_failure_and_the_good_lines_are_read(tmp_path: Path, bad_at: int):
    lines = [json.dumps({"caption": f"caption {i}"}) for i in range(5)]
    lines.insert(bad_at, '{"caption": "cut short')
    p = tmp_path / "caps.jsonl"
    p.write_text("\n".join(lines) + "\n")
    samples, failures = _read(p)
    assert [s.caption for s in samples] == [f"caption {i}" for i in range(5)]
    (f,) = failures
    assert f"caps.jsonl, line {bad_at + 1} is not valid JSON" in f.reason
    assert f.uri == str(p) and f.member == f"line:{bad_at + 1}" and f.key == f"caps/{bad_at:09d}"


def test_inspect_of_a_jsonl_whose_first_line_is_bad_is_a_report_not_a_traceback(tmp_path: Path):
    p = tmp_path / "caps.jsonl"
    p.write_text("not json at all\n" + "\n".join(json.dumps({"text": f"t{i}"}) for i in range(3)) + "\n")
    r = runner.invoke(app, ["inspect", str(p), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert (report["samples_ok"], report["errors"]) == (3, 1)
    assert "line 1 is not valid JSON" in report["failures"][0]["reason"]


def test_a_json_line_that_is_not_an_object_names_its_line(tmp_path: Path):
    p = tmp_path / "caps.jsonl"
    p.write_text('{"caption": "a"}\n[1, 2]\n{"caption": "b"}\n')
    samples, failures = _read(p)
    assert [s.caption for s in samples] == ["a", "b"]
    assert [f.reason for f in failures] == ["caps.jsonl, line 2 is JSON but not an object (list)"]


def test_csv_rows_with_the_wrong_number_of_fields(tmp_path: Path):
    p = tmp_path / "caps.csv"
    p.write_text('key,caption\nk0,first\nk1,second,extra\nk2\nk3,"quoted, with comma"\nk4,last\n')
    samples, failures = _read(p)
    assert [(s.key, s.caption) for s in samples] == [
        ("k0", "first"),
        ("k3", "quoted, with comma"),
        ("k4", "last"),
    ]
    assert [f.reason for f in failures] == [
        "caps.csv, line 3 has 3 field(s), the header has 2",
        "caps.csv, line 4 has 1 field(s), the header has 2",
    ]


def test_a_file_that_is_no_table_at_all_is_one_failure_naming_it(tmp_path: Path):
    d = tmp_path / "tables"
    d.mkdir()
    (d / "a.jsonl").write_text("\n".join(json.dumps({"caption": f"c{i}"}) for i in range(3)))
    (d / "b.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary\nmore binary\nand more\n")
    samples, failures = _read(d)
    assert len(samples) == 3
    (f,) = failures
    assert f.uri.endswith("b.jsonl") and f.key == ""
    assert "b.jsonl cannot be read: not JSON lines: none of its 5 lines is a JSON object" in f.reason
    assert "line 1 is not valid UTF-8" in f.reason
    # a parquet that is not one: the source cannot even be opened, and says why
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    r = runner.invoke(app, ["inspect", str(tmp_path / "x.parquet")])
    assert r.exit_code == 2 and "cannot be read as a table" in r.output and "Traceback" not in r.output


def test_a_json_array_of_records_is_read_whole(tmp_path: Path):
    p = tmp_path / "captions.json"
    p.write_text(json.dumps([{"image": f"images/{i}.jpg", "caption": f"c{i}"} for i in range(4)], indent=1))
    r = runner.invoke(app, ["inspect", str(p), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["captions"]["with_caption"] == 4
    m = tmp_path / "mapping.json"
    m.write_text(json.dumps({"a.jpg": "an apple", "b.jpg": "a bee"}, indent=2))
    samples, failures = _read(m)
    assert [s.caption for s in samples] == ["an apple", "a bee"] and not failures


def test_tables_are_cut_into_bounded_shards_by_default(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = DEFAULT_TABLE_SHARD_ROWS * 2 + 5
    p = tmp_path / "big.parquet"
    pq.write_table(pa.table({"TEXT": [f"c{i}" for i in range(n)]}), p, row_group_size=3000)
    src = open_source(str(p))
    assert [(s.start, s.stop) for s in src.shards()] == [
        (0, DEFAULT_TABLE_SHARD_ROWS),
        (DEFAULT_TABLE_SHARD_ROWS, 2 * DEFAULT_TABLE_SHARD_ROWS),
        (2 * DEFAULT_TABLE_SHARD_ROWS, n),
    ]
    last = [s for s in src.read_shard(src.shards()[2]) if isinstance(s, Sample)]
    assert [s.caption for s in last] == [f"c{i}" for i in range(2 * DEFAULT_TABLE_SHARD_ROWS, n)]
    assert [s.caption for s in _read(p, shard_size=7)[0]][:9] == [f"c{i}" for i in range(9)]


def test_resuming_an_output_made_with_the_old_whole_file_layout_is_refused(tmp_path: Path, monkeypatch):
    from recaption.index import IndexStage
    from recaption.readers.base import InputShard
    from recaption.readers.table import TableSource
    from recaption.runner import run_stage
    from recaption.runner.base import OutputConflictError

    p = tmp_path / "caps.jsonl"
    p.write_text("\n".join(json.dumps({"caption": f"c{i}"}) for i in range(20)))
    new_layout = TableSource.shards
    # before bounded shards, a table file was one shard without a row range
    monkeypatch.setattr(
        TableSource, "shards", lambda self: [InputShard(index=0, uri=u, kind=self.kind) for u in self.files]
    )
    out = str(tmp_path / "out")
    assert run_stage(IndexStage(source=open_source(str(p))), out).ok
    monkeypatch.setattr(TableSource, "shards", new_layout)
    with pytest.raises(OutputConflictError, match=r"refusing to mix outputs.*plan_digest"):
        run_stage(IndexStage(source=open_source(str(p))), out)


def test_a_csv_row_with_bytes_that_are_not_utf8_costs_only_that_row(tmp_path: Path):
    # one stray Latin-1 byte on line 3 made the whole file "not UTF-8 text near line 1": inspect
    # refused it and a run lost every row after it
    p = tmp_path / "caps.csv"
    p.write_bytes(b"caption\ngood1\ncaf\xe9 latin-1\ngood2\ngood3\n")
    samples, failures = _read(p)
    assert [s.caption for s in samples] == ["good1", "good2", "good3"]
    (f,) = failures
    assert f.reason == "caps.csv, line 3 is not valid UTF-8 (byte b'\\xe9')"
    assert f.key == "caps/000000001" and f.member == "line:3"


@pytest.mark.parametrize("body", [b"", b"\n\n", b"\xef\xbb\xbf"])
def test_an_empty_table_among_others_is_a_warning_naming_it(tmp_path: Path, body: bytes):
    # it was an error "shard lacks column(s) caption; it has " (nothing named)
    d = tmp_path / "tables"
    d.mkdir()
    (d / "a.jsonl").write_text('{"caption": "one"}\n')
    (d / "b.jsonl").write_bytes(body)
    samples, failures = _read(d)
    assert [s.caption for s in samples] == ["one"]
    (f,) = failures
    assert f.severity == "warning" and f.reason == "b.jsonl holds no rows (empty file)"


def test_json_lines_named_json_with_a_first_line_over_a_megabyte(tmp_path: Path):
    # the layout was judged on the first 1 MiB of line 1: cut, it did not parse, so the file was
    # taken for one JSON document and refused whole ("Extra data at line 2")
    p = tmp_path / "caps.json"
    p.write_text(json.dumps({"caption": "y" * (1 << 20)}) + "\n" + json.dumps({"caption": "short"}) + "\n")
    samples, failures = _read(p)
    assert [len(s.caption or "") for s in samples] == [1 << 20, 5] and failures == []


def test_a_folder_of_tables_whose_first_file_is_empty_or_broken_is_read(tmp_path: Path):
    # the columns were read from the first file alone: an empty 00.jsonl refused the whole folder
    # ("no caption column ... available: (none)")
    d = tmp_path / "tables"
    d.mkdir()
    (d / "00.jsonl").write_bytes(b"")
    (d / "01.jsonl").write_text("junk\n")
    (d / "02.jsonl").write_text('{"caption": "ok"}\n')
    samples, failures = _read(d)
    assert [s.caption for s in samples] == ["ok"]
    assert sorted((Path(f.uri).name, f.severity) for f in failures) == [
        ("00.jsonl", "warning"),
        ("01.jsonl", "error"),
    ]
