from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recaption import __version__
from recaption.cli import app
from tests.builders import image_bytes, sam_member_pairs, shared, truncated_jpeg, wds_sample, write_tar

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_version_and_help():
    r = invoke("--version")
    assert r.exit_code == 0
    assert __version__ in r.output
    r = invoke("--help")
    assert r.exit_code == 0
    assert "inspect" in r.output


def test_help_imports_no_heavy_library():
    code = (
        "import sys; from recaption.cli import app; "
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'spacy', 'ray', 'pyarrow', 'pandas') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _inspect(path: Path | str, *extra: str) -> dict:
    r = invoke("inspect", str(path), "--json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_inspect_sam_tar(tmp_path: Path):
    tar = write_tar(
        tmp_path / "sa_000000.tar",
        sam_member_pairs(1, 4)
        + [("sa_9.jpg", truncated_jpeg()), ("sa_10.jpg", image_bytes(1, 1, fmt="PNG"))],
    )
    r = _inspect(tar)
    assert r["kind"] == "sam"
    assert r["shards"] == 1
    assert r["samples_read"] == 6
    assert r["samples_ok"] == 4
    assert r["errors"] == 2
    assert set(r["error_reasons"]) == {"truncated image", "image is too small"}
    assert sum(r["images"]["aspect_ratio_hw"].values()) == 4


def test_inspect_webdataset_set(tmp_path: Path):
    for t in range(3):
        samples = []
        for i in range(5):
            samples += wds_sample(f"{t:05d}{i:04d}", f"caption number {i}", seed=i)
        write_tar(tmp_path / "wds" / f"{t:05d}.tar", samples)
    r = _inspect(tmp_path / "wds")
    assert (r["kind"], r["shards"], r["samples_ok"], r["errors"]) == ("webdataset", 3, 15, 0)
    assert r["captions"]["with_caption"] == 15
    assert r["captions"]["words"]["median"] == 3


def test_inspect_laion_metadata_parquet():
    path = shared("laion", "img2dataset_test_1000.parquet")
    r = _inspect(path)
    assert (r["kind"], r["shards"], r["samples_ok"], r["has_images"]) == ("table", 1, 1000, False)
    assert r["images"] is None
    assert r["captions"]["with_caption"] == 1000


def test_inspect_plain_folder_with_bad_files(tmp_path: Path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(4):
        (d / f"img{i}.jpg").write_bytes(image_bytes(80, 60, seed=i))
    (d / "empty.jpg").write_bytes(b"")
    (d / "tall.png").write_bytes(image_bytes(40, 200, fmt="PNG"))
    (d / "wide.png").write_bytes(image_bytes(500, 50, fmt="PNG"))
    r = _inspect(d)
    assert (r["kind"], r["samples_read"], r["samples_ok"], r["errors"]) == ("folder", 7, 6, 1)
    assert r["images"]["extreme_aspect"] == 2
    assert any("empty file" in f["reason"] for f in r["failures"])
    reasons = {f["key"]: f["reason"] for f in r["failures"]}
    # PixArt drops the tall one and keeps the wide one in its 0.25 bucket, cropped
    assert "height/width 5.00 (40x200)" in reasons["tall"] and "PixArt drops it" in reasons["tall"]
    assert "keeps it in its widest bucket, cropping 60% of the width away" in reasons["wide"]


def test_inspect_pixel_cap(tmp_path: Path):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "small.png").write_bytes(image_bytes(100, 100, fmt="PNG"))
    (d / "huge.png").write_bytes(image_bytes(1200, 1000, fmt="PNG"))
    r = _inspect(d, "--max-pixels", "1000000")
    assert r["samples_ok"] == 1
    assert "over the pixel cap" in r["failures"][0]["reason"]


def test_inspect_real_sam_photos_and_limit():
    d = shared("sam")
    r = _inspect(d, "--limit", "2")
    assert r["samples_read"] == 2
    assert r["limited"]


def test_inspect_human_output(tmp_path: Path):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "a.jpg").write_bytes(image_bytes())
    (d / "b.jpg").write_bytes(b"not an image at all")
    r = invoke("inspect", str(d))
    assert r.exit_code == 0
    assert "1 usable of 2" in r.output
    assert "not an image" in r.output


def test_missing_source_is_a_clear_error(tmp_path: Path):
    r = runner.invoke(app, ["inspect", str(tmp_path / "nowhere")])
    assert r.exit_code == 2
    assert "does not exist" in r.output


def test_bad_kind_names_accepted_values(tmp_path: Path):
    r = runner.invoke(app, ["inspect", str(tmp_path), "--kind", "coco"])
    assert r.exit_code == 2
    assert "--kind" in r.output
    assert "'sam'" in r.output


def test_index_command_then_rerun_skips(tmp_path: Path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(5):
        (d / f"{i}.jpg").write_bytes(image_bytes(seed=i))
    out = tmp_path / "idx"
    r = invoke("index", str(d), str(out), "--shard-size", "2", "--json")
    assert r.exit_code == 0
    first = json.loads(r.output[r.output.index("{") :])
    assert (first["done_shards"], first["rows"]) == (3, 5)
    r = invoke("index", str(d), str(out), "--shard-size", "2", "--json")
    second = json.loads(r.output[r.output.index("{") :])
    assert (second["done_shards"], second["skipped_shards"]) == (0, 3)
    r = runner.invoke(app, ["index", str(d), str(out), "--shard-size", "3"])
    assert r.exit_code == 2
    assert "refusing to mix outputs" in r.output


@pytest.mark.parametrize("cmd", ["inspect", "index"])
def test_subcommand_help(cmd: str):
    assert invoke(cmd, "--help").exit_code == 0


def test_status_reports_progress_and_in_flight_shards(tmp_path: Path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(5):
        (d / f"{i}.jpg").write_bytes(image_bytes(seed=i))
    (d / "bad.jpg").write_bytes(b"")
    out = tmp_path / "idx"
    invoke("index", str(d), str(out), "--shard-size", "2")
    (out / "_stats" / "part-00001.json").unlink()  # as if shard 1 were still being written
    (out / ".part-00001.parquet.tmp-0123456789ab").write_bytes(b"")
    r = invoke("status", str(out), "--json")
    s = json.loads(r.output)["stages"][0]
    assert (s["stage"], s["shards_total"], s["shards_done"], s["shards_in_progress"]) == ("index", 3, 2, [1])
    assert not s["complete"]
    assert s["errors"] == 1
    assert invoke("status", str(out)).exit_code == 0
    r = runner.invoke(app, ["status", str(tmp_path / "nothing")])
    assert r.exit_code == 2
