"""What ``inspect`` and ``index`` show of a source's problems: real reasons, options that exist."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from recaption.cli import app
from recaption.shards.manifest import reason_category
from tests.builders import image_bytes

runner = CliRunner()


def test_reason_categories_keep_names_and_details_whole():
    reason = (
        "caption file 'a.txt' is not valid UTF-8 (byte 3: b'\\xff'); "
        "decoded with U+FFFD replacement characters"
    )
    assert (
        reason_category(reason)
        == "caption file is not valid UTF-8; decoded with U+FFFD replacement characters"
    )
    assert reason_category("duplicate key 'a': already used by row 3") == "duplicate key"
    assert reason_category("image is too small: 10x12 px") == "image is too small"


def test_index_json_lists_the_real_reasons(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(image_bytes(64, 64, fmt="PNG"))
    (src / "a.txt").write_bytes(b"caf\xe9 au lait")  # latin-1, not UTF-8
    r = runner.invoke(app, ["index", str(src), str(tmp_path / "out"), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["warnings"] == 1
    (category,) = report["warning_reasons"]
    assert "UTF-N" not in category and "(byte N" not in category
    (row,) = report["failures"]
    assert row["key"] == "a" and row["severity"] == "warning"
    assert "not valid UTF-8 (byte 3: b'\\xe9')" in row["reason"]


def test_the_image_column_advice_names_an_option_that_works(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pics = [image_bytes(48, 40, seed=i, fmt="PNG") for i in range(3)]
    pq.write_table(
        pa.table({"pixels": pa.array(pics, pa.binary()), "caption": ["a", "b", "c"]}), tmp_path / "t.parquet"
    )
    r = runner.invoke(app, ["inspect", str(tmp_path / "t.parquet"), "--kind", "parquet", "--json"])
    assert r.exit_code != 0
    assert "--image-column" in r.output and "source.image_column" in r.output
    r = runner.invoke(app, ["inspect", str(tmp_path / "t.parquet"), "--image-column", "pixels", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert (report["kind"], report["samples_ok"], report["images"]["width"]["max"]) == ("parquet", 3, 48.0)
    from recaption.pipeline.config import SourceConfig

    assert SourceConfig(path="x", image_column="pixels").image_column == "pixels"


def test_every_source_setting_has_its_flag_where_a_source_is_opened():
    import typer.main

    from recaption.pipeline.config import SourceConfig

    fields = set(SourceConfig.model_fields) - {"path"}  # the SOURCE argument
    for command in ("inspect", "index", "caption"):
        params = {p.name for p in typer.main.get_command(app).commands[command].params}  # type: ignore[attr-defined]
        assert fields <= params, f"{command} lacks {fields - params}"
