"""Common caption layouts of an image folder: Hugging Face imagefolder ``metadata.jsonl``/``.csv``
and JSON manifests mapping file names to captions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recaption.cli import app
from recaption.errors import ConfigError
from recaption.readers import Failure, Sample, open_source
from recaption.readers.folder import FolderSource
from tests.builders import image_bytes, shared

runner = CliRunner()


def _folder(tmp_path: Path, names: list[str]) -> Path:
    d = tmp_path / "photos"
    for i, n in enumerate(names):
        (d / n).parent.mkdir(parents=True, exist_ok=True)
        (d / n).write_bytes(image_bytes(40, 32, seed=i))
    return d


def _read(d: Path, **kw) -> tuple[dict[str, str | None], list[Failure]]:
    items = list(open_source(str(d), **kw).iter_samples())
    return (
        {s.key: s.caption for s in items if isinstance(s, Sample)},
        [f for f in items if isinstance(f, Failure)],
    )


def test_the_shared_web_pairs_folder_as_it_is():
    d = shared("web_pairs")
    records = json.loads((d / "captions.json").read_text())
    src = open_source(str(d))
    assert isinstance(src, FolderSource) and [m.describe() for m in src.manifests] == [
        "captions.json (image → caption)"
    ]
    r = runner.invoke(app, ["inspect", str(d), "--json", "--no-decode"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["captions"]["with_caption"] == len(records) == report["samples_ok"]
    assert report["captions"]["from"] == ["captions.json (image → caption)"]
    captions, _ = _read(d)
    first = records[0]
    assert captions[first["image"].rsplit(".", 1)[0]] == first["caption"]


def test_imagefolder_metadata_jsonl(tmp_path: Path):
    d = _folder(tmp_path, ["a.jpg", "b.jpg", "sub/c.png"])
    lines = [
        json.dumps({"file_name": "a.jpg", "text": "an apple"}),
        "{broken",
        json.dumps({"file_name": "sub/c.png", "text": "a cat"}),
        json.dumps({"file_name": "zz.jpg", "text": "not here"}),
    ]
    (d / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    captions, failures = _read(d)
    assert captions == {"a": "an apple", "b": None, "sub/c": "a cat"}
    reasons = sorted(f.reason for f in failures)
    assert reasons == [
        "metadata.jsonl has a caption for 'zz.jpg', which is not an image of this folder",
        "metadata.jsonl, line 2 is not valid JSON "
        "(Expecting property name enclosed in double quotes at column 2)",
    ]


def test_imagefolder_metadata_csv_with_one_text_column_and_an_override(tmp_path: Path):
    d = _folder(tmp_path, ["a.jpg", "b.jpg"])
    (d / "metadata.csv").write_text('file_name,description,rating\na.jpg,"red, round",5\nb.jpg,a bee,4\n')
    captions, failures = _read(d)
    assert captions == {"a": "red, round", "b": "a bee"} and not failures
    d2 = _folder(tmp_path / "two", ["a.jpg"])
    (d2 / "metadata.jsonl").write_text(json.dumps({"file_name": "a.jpg", "short": "s", "long": "a long one"}))
    captions, failures = _read(d2)  # two text columns: none picked, and it says so
    assert captions == {"a": None}
    assert any("several text column(s)" in f.reason and "--text-column" in f.reason for f in failures)
    captions, _ = _read(d2, text_column="long")
    assert captions == {"a": "a long one"}


def test_json_manifests_mapping_and_records(tmp_path: Path):
    d = _folder(tmp_path, ["a.jpg", "b.jpg"])
    (d / "captions.json").write_text(json.dumps({"a.jpg": "an apple", "b.jpg": "a bee"}, indent=1))
    assert _read(d)[0] == {"a": "an apple", "b": "a bee"}
    d2 = _folder(tmp_path / "r", ["images/a.jpg", "images/b.jpg"])
    (d2 / "captions.json").write_text(json.dumps([{"image": "images/b.jpg", "caption": "a bee"}]))
    (d2 / "images" / "a.txt").write_text("from the sidecar")
    assert _read(d2)[0] == {"images/a": "from the sidecar", "images/b": "a bee"}


def test_a_json_mapping_written_on_one_line_is_a_mapping(tmp_path: Path):
    """``json.dump(captions, f)`` writes one line. Caught: the file was taken for JSON lines with one
    record whose columns were the file names ('a manifest has a file_name/image/file column; this
    has a.jpg, b.jpg'), and every caption was lost."""
    d = _folder(tmp_path, ["a.jpg", "b.JPG"])
    (d / "captions.json").write_text(json.dumps({"a.jpg": "an apple", "b.JPG": "a bee"}))
    assert _read(d) == ({"a": "an apple", "b": "a bee"}, [])
    # one record on one line is still a record, not a mapping of its column names
    (d / "captions.json").write_text(json.dumps({"image": "b.JPG", "caption": "one record"}))
    assert _read(d) == ({"a": None, "b": "one record"}, [])


def test_text_column_is_refused_on_a_folder_without_a_manifest(tmp_path: Path):
    d = _folder(tmp_path, ["a.jpg"])
    with pytest.raises(ConfigError, match=r"--text-column"):
        open_source(str(d), text_column="text")


def test_manifests_and_tables_written_with_a_byte_order_mark(tmp_path: Path):
    # Excel's "CSV UTF-8" and Notepad start files with a BOM: the CSV's first column was named
    # '\ufefffile_name' (captions: none) and the first JSON line did not parse (its caption lost)
    d = _folder(tmp_path, ["a.jpg", "b.jpg"])
    bom = b"\xef\xbb\xbf"
    (d / "metadata.csv").write_bytes(
        bom + b'file_name,text\r\na.jpg,"red, square"\r\nb.jpg,"two\r\nlines"\r\n'
    )
    captions, failures = _read(d)
    assert captions == {"a": "red, square", "b": "two\r\nlines"} and failures == []
    (d / "metadata.csv").unlink()
    (d / "metadata.jsonl").write_bytes(
        bom + b'{"file_name": "a.jpg", "text": "cap a"}\r\n{"file_name": "b.jpg", "text": "cap b"}\r\n'
    )
    captions, failures = _read(d)
    assert captions == {"a": "cap a", "b": "cap b"} and failures == []
    (d / "metadata.jsonl").unlink()
    (d / "captions.json").write_bytes(bom + json.dumps({"a.jpg": "m a", "b.jpg": "m b"}, indent=1).encode())
    captions, failures = _read(d)
    assert captions == {"a": "m a", "b": "m b"} and failures == []
    for name, body in (
        ("t.jsonl", b'{"caption": "c1"}\n{"caption": "c2"}\n'),
        ("t.csv", b"caption\nc1\nc2\n"),
    ):
        (tmp_path / name).write_bytes(bom + body)
        items = list(open_source(str(tmp_path / name)).iter_samples())
        assert [s.caption for s in items if isinstance(s, Sample)] == ["c1", "c2"], items


def test_manifest_rows_that_are_not_used_say_why(tmp_path: Path):
    # a row whose file_name is no string and a second caption for a file were dropped without a
    # word, and a null caption became "" (hiding the .json sidecar's caption)
    d = _folder(tmp_path, ["a.jpg", "c.jpg"])
    (d / "c.json").write_text(json.dumps({"caption": "from the sidecar"}))
    rows = [
        {"file_name": "a.jpg", "text": "cap a"},
        {"file_name": 7, "text": "numeric name"},
        {"file_name": "c.jpg", "text": None},
        {"file_name": "a.jpg", "text": "dup a"},
    ]
    (d / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    captions, failures = _read(d)
    assert captions == {"a": "cap a", "c": "from the sidecar"}
    reasons = sorted(f.reason for f in failures)
    assert reasons == [
        "metadata.jsonl, line 2: file_name is 7, not a file name; its caption was not used",
        "metadata.jsonl, line 4: a second caption for 'a.jpg'; the first was kept",
    ]
    assert all(f.severity == "warning" for f in failures)
