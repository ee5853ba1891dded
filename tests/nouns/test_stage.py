"""The nouns stage: shards, per-shard statistics merged exactly, reports, the command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from recaption.cli import app
from recaption.errors import ConfigError, MissingColumnsError
from recaption.nouns.options import NounOptions
from recaption.nouns.stage import NounsStage, make_inputs, merge_counts, merge_reports
from recaption.runner import RayOptions, run_local, run_ray
from recaption.shards.manifest import read_failures
from tests.builders import shared

CAPTIONS = [
    "A dog chases a ball across the park near two old trees.",
    "Three cats sleep on a red sofa beside a window.",
    "",
    "   ",
    "A man in a blue jacket rides a bicycle down a busy street with cars and buses.",
    "The kitchen has a wooden table, four chairs and a bowl of apples.",
] * 20


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    p = tmp_path / "caps.jsonl"
    p.write_text("\n".join(json.dumps({"id": i, "text": c}) for i, c in enumerate(CAPTIONS)))
    return p


def _run(inputs, out: Path, **kw):
    stage = NounsStage(inputs=inputs, options=NounOptions())
    summary = run_local(stage, str(out), progress=False, **kw)
    assert summary.ok
    return merge_counts(str(out))


def test_nouns_per_caption_and_counts(jsonl: Path, tmp_path: Path):
    out = tmp_path / "n"
    stats = _run(make_inputs([str(jsonl)], ["mine"], None, ["text"]), out)
    df = pd.read_parquet(out)
    assert len(df) == len(CAPTIONS)
    first = df.iloc[0]
    assert list(first.mine_nouns) == ["dog", "ball", "park", "tree"]
    assert first.mine_n_nouns == 4
    assert bool(df.iloc[2].mine_empty)
    assert df.iloc[2].mine_n_nouns == 0
    s = stats["mine"]
    assert s.captions == len(CAPTIONS)
    assert s.empty == 40
    assert s.noun_counts["dog"] == 20


def test_sharding_does_not_change_the_statistics(jsonl: Path, tmp_path: Path):
    one = _run(make_inputs([str(jsonl)], ["x"], None, ["text"]), tmp_path / "a")
    parquet = tmp_path / "caps.parquet"
    pd.DataFrame({"text": CAPTIONS}).to_parquet(parquet, row_group_size=10)
    stage = NounsStage(inputs=make_inputs([str(parquet)], ["x"], None, ["text"], shard_size=17))
    assert len(stage.shards()) == 8
    assert run_local(stage, str(tmp_path / "b"), progress=False).ok
    many = merge_counts(str(tmp_path / "b"))
    assert many["x"].to_json() == one["x"].to_json()


def test_caption_run_columns_compared_side_by_side(tmp_path: Path):
    """A caption-stage output: raw and dense columns become two labels."""
    from recaption.captioner.stage import caption_schema
    from recaption.readers.base import InputShard
    from recaption.runner.base import prepare_output
    from recaption.shards.layout import StageDir
    from recaption.shards.writer import ShardOutput
    from recaption.stage import Stage

    class FakeCaptions(Stage):
        name = "caption"

        def schema(self):
            return caption_schema()

        def fingerprint(self):
            return {}

        def shards(self):
            return [InputShard(index=i, uri="x") for i in range(2)]

        def process_shard(self, shard, out):
            return {}

    caps = tmp_path / "captions"
    fake = FakeCaptions()
    prepare_output(fake, str(caps), fake.shards())
    for i in range(2):
        out = ShardOutput(
            StageDir(str(caps)), InputShard(index=i, uri="x"), caption_schema(), stage="caption"
        )
        out.write(
            [
                {
                    "key": f"k{i}{j}",
                    "raw_caption": "red car",
                    "dense_caption": "A red car is near a tall building.",
                }
                for j in range(3)
            ]
            + [{"key": f"k{i}9", "raw_caption": None, "dense_caption": None, "error": "truncated image"}]
            # captioning failed, but the raw caption exists: still not in either row
            + [{"key": f"k{i}8", "raw_caption": "blue boat", "dense_caption": None, "error": "out of memory"}]
            # no alt-text: an empty raw caption (no nouns), the image still in both rows
            + [{"key": f"k{i}7", "raw_caption": None, "dense_caption": "A dog sits on a mat."}]
        )
        out.commit()
    inputs = make_inputs([str(caps)], None, None)
    assert [label for inp in inputs for label in inp.labels] == ["raw", "dense"]
    out_dir = tmp_path / "nouns"
    run_local(NounsStage(inputs=inputs), str(out_dir), progress=False)
    urls, _ = merge_reports(str(out_dir))
    stats = merge_counts(str(out_dir))
    # both rows over the same 8 images: the 4 whose captioning failed are in neither
    assert stats["raw"].captions == stats["dense"].captions == 8
    assert stats["raw"].empty == 2  # the images without alt-text
    assert dict(stats["raw"].noun_counts) == {"car": 6}  # "red car", never "blue boat"
    assert stats["dense"].total_nouns == 6 * 2 + 2 * 2  # car, building; dog, mat
    rows = pd.read_parquet(out_dir)
    assert len(rows) == 12  # a row per caption-shard row, counted or not
    md = Path(urls["markdown"]).read_text()
    assert "raw" in md
    assert "dense" in md
    assert "VN/DN" in md
    assert json.loads(Path(urls["json"]).read_text())["options"]["lemmatize"] is True


def test_missing_text_column_fails_naming_columns(tmp_path: Path):
    p = tmp_path / "c.parquet"
    pd.DataFrame({"TEXT": ["a dog"], "URL": ["u"]}).to_parquet(p)
    inputs = make_inputs([str(p)], None, None, ["caption_dense"])
    with pytest.raises(MissingColumnsError) as e:
        NounsStage(inputs=inputs).shards()
    assert "'TEXT'" in str(e.value)


def test_one_text_column_names_the_tables_caption_among_other_inputs(tmp_path: Path):
    """`--text-column alt` once for all inputs: the table's column; the captions folder beside it
    takes its captions from its own files. Given with no table at all, it is refused."""
    table = tmp_path / "t.parquet"
    pd.DataFrame({"alt": ["a dog on a sofa", "two cats"], "URL": ["u1", "u2"]}).to_parquet(table)
    folder = tmp_path / "caps"
    folder.mkdir()
    (folder / "a.txt").write_text("a red car near a tree")
    inputs = make_inputs([str(table), str(folder)], ["web", "folder"], None, ["alt"])
    assert [i.text_column for i in inputs] == ["alt", None]
    out = tmp_path / "n"
    stats = _run(inputs, out)
    assert (stats["web"].captions, stats["folder"].captions) == (2, 1)
    with pytest.raises(ConfigError, match=r"--text-column.*only with table inputs"):
        make_inputs([str(folder)], None, None, ["alt"])


def test_caption_run_columns_on_a_table_are_refused(jsonl: Path):
    with pytest.raises(ConfigError, match=r"--column.*caption-stage outputs.*--text-column"):
        make_inputs([str(jsonl)], None, ["dense_caption"])


def test_long_caption_truncated_and_flagged(tmp_path: Path):
    p = tmp_path / "c.jsonl"
    long = "word " * 30_000 + "dog"
    p.write_text(json.dumps({"caption": long}) + "\n" + json.dumps({"caption": "a cat"}) + "\n")
    out = tmp_path / "n"
    _run(make_inputs([str(p)], ["x"], None), out)
    df = pd.read_parquet(out)
    assert bool(df.iloc[0].x_truncated)
    fails = read_failures(str(out))
    assert "over max_chars" in fails.reason.iloc[0]


@pytest.mark.slow
def test_one_and_two_ray_workers_give_identical_statistics(local_ray, jsonl: Path, tmp_path: Path):
    csvs = []
    for i in range(4):
        p = tmp_path / f"part{i}.jsonl"
        p.write_text("\n".join(json.dumps({"text": c}) for c in CAPTIONS[i::4]))
        csvs.append(str(p))
    local = _run(make_inputs(csvs, ["a", "b", "c", "d"], None, ["text"]), tmp_path / "local")
    stage = NounsStage(inputs=make_inputs(csvs, ["a", "b", "c", "d"], None, ["text"]))
    summary = run_ray(stage, str(tmp_path / "ray"), RayOptions(num_workers=2), progress=False)
    assert summary.ok
    assert summary.workers == 2  # two actors started; timing decides which shards each does
    # every shard done exactly once, in the actors' processes (not the driver's)
    workers = [s["worker"] for s in summary.done]
    assert sorted(s["shard"] for s in summary.done) == list(range(summary.total_shards))
    assert all(w.rsplit(":", 1)[1] != str(os.getpid()) for w in workers)
    ray_stats = merge_counts(str(tmp_path / "ray"))
    assert {k: v.to_json() for k, v in ray_stats.items()} == {k: v.to_json() for k, v in local.items()}


def test_command_on_real_laion_and_dense_captions(tmp_path: Path):
    laion = shared("laion", "img2dataset_test_1000.parquet")
    dense = shared("dense", "iiw_IIW-400.jsonl")
    out = tmp_path / "table1"
    r = CliRunner().invoke(
        app,
        [
            "nouns",
            str(laion),
            str(dense),
            str(out),
            "--label",
            "LAION",
            "--label",
            "IIW",
            "--text-column",
            "TEXT",
            "--text-column",
            "IIW",
            "--executor",
            "local",
            "--json",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0
    report = json.loads(r.output[r.output.index("{") :])
    rows = {row["label"]: row for row in report["datasets"]}
    assert rows["IIW"]["nouns_per_caption"] > 3 * rows["LAION"]["nouns_per_caption"]
    # at a matched sample size and threshold (the report's rarefied comparison), dense is richer
    (cmp,) = report["comparisons"]
    assert cmp["b_expected_vn"] / cmp["b_expected_dn"] > cmp["a_expected_vn"] / cmp["a_expected_dn"]
    assert (out / "_report" / "nouns.md").exists()
