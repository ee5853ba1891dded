"""What a finished run tells its user: caption quality in summary.json and on the console, a rerun
with nothing to do said as such, and tables that do not wrap in logs (not a terminal)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from recaption.cli import app
from recaption.quality import quality_lines, stage_quality
from tests.pipeline.conftest import make_webdataset


@pytest.fixture(scope="module")
def pipeline_file(tmp_path_factory: pytest.TempPathFactory, tiny_llava_dir: str) -> Path:
    """Captions and nouns of 6 images in 2 shards; 6 new tokens, so every caption hits the limit."""
    import yaml

    root = tmp_path_factory.mktemp("summary")
    src = make_webdataset(root / "wds", n=6, per_shard=3)
    cfg = {
        "source": {"path": str(src)},
        "output": str(root / "run"),
        "executor": "local",
        "caption": {"model": tiny_llava_dir, "device": "cpu", "max_new_tokens": 6, "batch_size": 3},
        "encode": {"enabled": False},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def runs(pipeline_file: Path) -> tuple[object, object]:
    """The first run and a rerun with nothing left to do."""
    first = CliRunner().invoke(app, ["run", str(pipeline_file)], catch_exceptions=False)
    second = CliRunner().invoke(app, ["run", str(pipeline_file)], catch_exceptions=False)
    return first, second


def test_summary_json_counts_finish_reasons(runs, pipeline_file: Path):
    first, _ = runs
    assert first.exit_code == 0, first.output
    out = pipeline_file.parent / "run"
    summary = json.loads((out / "summary.json").read_text())
    shards = pd.read_parquet(out / "captions")
    q = summary["stages"]["caption"]["quality"]  # the rerun's own (nothing done) ...
    assert q["finish_reasons"] == {"stop": 0, "length": 0, "error": 0}
    tq = summary["totals"]["caption"]["quality"]  # ... and the whole output's
    assert tq["finish_reasons"] == {
        "stop": int((shards["finish_reason"] == "stop").sum()),
        "length": int((shards["finish_reason"] == "length").sum()),
        "error": int(shards["error"].notna().sum()),
    }
    assert tq["finish_reasons"]["length"] == 6  # 6 tokens: every caption cut
    assert tq["repetition"] == int(shards["repetition"].sum())
    assert tq["prompt_fallback"] == int(shards["prompt_fallback"].sum())
    assert summary["stages"]["caption"]["errors"] == 0
    assert summary["stages"]["caption"]["warnings"] == 0


def test_console_shows_the_cut_captions(runs):
    first, _ = runs
    # "0 errors, 0 warnings" alone hid that every caption was cut; now it is said
    assert "6 samples: 0 captions finished (stop), 6 cut at max_new_tokens (length)" in first.stderr
    assert "100% of the captions stopped at max_new_tokens: raise caption.max_new_tokens" in first.stderr
    assert "6 images in" in first.stderr


def test_rerun_with_nothing_to_do_says_so(runs):
    _, second = runs
    assert second.exit_code == 0, second.output
    assert "nothing to do: every shard already done (caption 2, nouns 2)" in second.stderr
    assert "0 images in" not in second.stderr
    # the whole output's quality is still shown
    assert "6 cut at max_new_tokens (length)" in second.stderr


def test_table1_on_stdout_unwrapped_in_logs(runs):
    first, _ = runs
    # Table 1 goes to stdout (as `recaption nouns` prints it), the run's summary to stderr
    assert "Noun statistics (PixArt-α Table 1 layout)" in first.stdout
    assert "Noun statistics" not in first.stderr
    header = next(line for line in first.stdout.splitlines() if "Dataset" in line)
    # one line per row: no header cell split over lines at 80 columns ("Datas / et")
    for cell in ("VN/DN", "Average", "Nouns/100 words", "Tokens/caption", "Captions"):
        assert cell in header
    rows = [line for line in first.stdout.splitlines() if line.startswith(("│ raw", "│ dense"))]
    assert len(rows) == 2 and all("/img" in r for r in rows)


def test_nouns_command_table_unwrapped(tmp_path: Path):
    captions = tmp_path / "c.jsonl"
    captions.write_text(
        "\n".join(json.dumps({"caption": f"a dog and a cat on a sofa number {i}"}) for i in range(5))
    )
    r = CliRunner().invoke(app, ["nouns", str(captions), str(tmp_path / "out"), "--label", "x"])
    assert r.exit_code == 0, r.output
    header = next(line for line in r.stdout.splitlines() if "Dataset" in line)
    assert "Tokens/caption" in header and "Captions" in header
    assert "nouns: 1 shard(s) written" in r.stderr


def test_quality_of_counters():
    q = stage_quality("caption", {"captioned": 10, "length_limited": 4, "repetitive": 1, "failed": 2})
    assert q == {
        "finish_reasons": {"stop": 6, "length": 4, "error": 2},
        "repetition": 1,
        "prompt_fallback": 0,
        "tokens": 0,
        "retried": 0,
        "retry_fixed": 0,
        "retry_still_flagged": 0,
    }
    lines = quality_lines("caption", q)
    assert lines[0] == (
        "caption: 12 samples: 6 captions finished (stop), 4 cut at max_new_tokens (length), "
        "2 without a caption (error)",
        True,
    )
    e = stage_quality("encode", {"encoded": 8, "truncated_dense": 3})
    assert e is not None and e["t5_truncated"] == {"dense": 3}
    assert quality_lines("encode", e) == [("encode: T5 truncated 3 dense caption(s) of 8 encoded rows", True)]
    assert stage_quality("nouns", {"captions_raw": 4}) is None


def test_a_file_the_reader_drops_is_no_caption_error(tmp_path: Path, tiny_llava_dir: str):
    """``finish_reasons`` are the caption rows' (as the report and the shards count them): ``x.png``
    beside ``x.jpg`` is dropped by the reader (a duplicate key, a manifest error) before captioning,
    yet summary.json counted it ``error`` (7 samples, 1 without a caption, against 6 rows and 0 in
    the report). It stays in the stage's errors and error reasons."""
    import yaml
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    for name, fmt in (("x.jpg", "JPEG"), ("x.png", "PNG"), ("y.jpg", "JPEG")):
        Image.new("RGB", (40, 32), (200, 30, 30)).save(src / name, format=fmt)
    cfg = {
        "source": {"path": str(src)},
        "output": str(tmp_path / "run"),
        "executor": "local",
        "caption": {"model": tiny_llava_dir, "device": "cpu", "max_new_tokens": 4},
        "nouns": {"enabled": False},
        "encode": {"enabled": False},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["run", str(tmp_path / "p.yaml")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    shards = pd.read_parquet(tmp_path / "run" / "captions")
    assert len(shards) == 2
    for q in (summary["stages"]["caption"], summary["totals"]["caption"]):
        assert q["errors"] == 1 and "duplicate key" in q["error_reasons"]
        assert sum(q["quality"]["finish_reasons"].values()) == len(shards)
        assert q["quality"]["finish_reasons"]["error"] == int(shards["error"].notna().sum()) == 0
    assert "2 samples: " in r.stderr and "without a caption (error)" in r.stderr


def test_the_run_folder_itself_opens_with_hf_datasets(runs, pipeline_file: Path, tmp_path: Path):
    """`datasets.load_dataset(RUN)` failed ("An error occurred while generating the dataset": it
    read every parquet below, failure manifests, nouns and features mixed); now the caption shards
    by default and another stage by name."""
    datasets = pytest.importorskip("datasets")
    out = pipeline_file.parent / "run"
    cache = str(tmp_path / "hf-cache")
    ds = datasets.load_dataset(str(out), split="train", cache_dir=cache)
    assert sorted(ds["key"]) == sorted(pd.read_parquet(out / "captions")["key"])
    assert "dense_caption" in ds.column_names
    nouns = datasets.load_dataset(str(out), "nouns", split="train", cache_dir=cache)
    assert sorted(nouns["key"]) == sorted(pd.read_parquet(out / "nouns")["key"])
