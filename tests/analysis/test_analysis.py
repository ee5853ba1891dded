"""The analysis functions against what the run's shards and report hold, read independently."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recaption import analysis as A
from recaption.errors import ConfigError, SourceError
from tests.analysis.conftest import BROKEN_KEY

LABELS = ["raw", "dense"]


@pytest.fixture(scope="module")
def run(run_dir: Path) -> A.Run:
    return A.load_run(str(run_dir))


@pytest.fixture(scope="module")
def shards(run_dir: Path) -> dict[str, pd.DataFrame]:
    """The shards as plain pandas reads them, to check the analysis against."""
    return {
        "captions": pd.read_parquet(run_dir / "captions"),
        "nouns": pd.read_parquet(run_dir / "nouns"),
    }


@pytest.fixture(scope="module")
def report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report" / "nouns.json").read_text())


def nouns_of(shards: dict[str, pd.DataFrame], label: str) -> Counter[str]:
    col = shards["nouns"][f"{label}_nouns"].dropna()
    return Counter(n for nouns in col for n in nouns)


# -- load_run --------------------------------------------------------------------------------------


def test_load_run_reads_every_part(run: A.Run, shards: dict[str, pd.DataFrame], run_dir: Path):
    assert run.labels == LABELS
    assert run.complete
    assert len(run.captions) == len(shards["captions"]) == 11
    assert sorted(run.captions["key"]) == sorted(shards["captions"]["key"])
    assert sorted(run.captions["shard"].unique()) == [0, 1, 2]
    assert run.summary["stages"]["caption"]["rows"] == 11
    assert run.config["output"] == str(run_dir)
    assert run.report["datasets"][0]["label"] == "raw"
    # nouns rows carry the caption columns they lack, joined on the key
    assert len(run.nouns) == 11
    merged = run.nouns.set_index("key")
    caps = shards["captions"].set_index("key")
    for col in ("width", "height", "finish_reason", "image_uri"):
        pd.testing.assert_series_equal(merged.loc[caps.index, col], caps[col])
    assert merged.loc[BROKEN_KEY, "error"] == caps.loc[BROKEN_KEY, "error"]
    assert isinstance(merged.loc[BROKEN_KEY, "error"], str)
    assert list(run.failed()["key"]) == [BROKEN_KEY]
    assert "11 caption rows, 1 without a dense caption" in run.describe()


def test_load_run_first_shards_only(run_dir: Path):
    part = A.load_run(str(run_dir), shards=1)
    assert not part.complete
    assert len(part.captions) == len(pd.read_parquet(run_dir / "captions" / "part-00000.parquet"))
    assert set(part.nouns["shard"]) == {0}
    # Table 1 still covers the whole run: it comes from the per-shard statistics. Raw and dense
    # rows cover the same images: the 10 of 11 whose captioning succeeded.
    t1 = A.table1(part)
    assert t1.loc["raw", "captions"] == t1.loc["dense", "captions"] == 10


def test_load_run_from_an_fsspec_url(run_dir: Path, run: A.Run):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.put(str(run_dir), "/analysis-run", recursive=True)
    try:
        mem = A.load_run("memory://analysis-run")
        assert mem.labels == run.labels
        pd.testing.assert_frame_equal(mem.captions, run.captions)
        pd.testing.assert_frame_equal(A.table1(mem), A.table1(run))
    finally:
        fs.rm("/analysis-run", recursive=True)


def test_load_run_refuses_other_folders(tmp_path: Path, run_dir: Path):
    with pytest.raises(SourceError, match="not a recaption run folder") as e:
        A.load_run(str(tmp_path))
    assert str(tmp_path) in str(e.value)
    assert "captions/_stage.json" in str(e.value)
    missing = tmp_path / "nowhere"
    with pytest.raises(SourceError, match="no such folder") as e:
        A.load_run(str(missing))
    assert str(missing) in str(e.value)
    # a stage folder is not a run folder either
    with pytest.raises(SourceError, match="not a recaption run folder"):
        A.load_run(str(run_dir / "captions"))


# -- Table 1 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", LABELS)
def test_table1_matches_the_shards(run: A.Run, shards: dict[str, pd.DataFrame], label: str):
    t = A.table1(run).loc[label]
    n = shards["nouns"]
    present = n[n[f"{label}_n_nouns"].notna()]
    counts = nouns_of(shards, label)
    # both labels over the 10 images whose captioning succeeded (the broken one is in neither)
    assert t["captions"] == len(present) == 10
    assert t["total_nouns"] == present[f"{label}_n_nouns"].sum() == sum(counts.values())
    assert t["dn"] == len(counts)
    assert t["vn"] == sum(1 for c in counts.values() if c > 10)
    assert t["nouns_per_caption"] == pytest.approx(present[f"{label}_n_nouns"].mean())
    assert t["words_per_caption"] == pytest.approx(present[f"{label}_n_words"].mean())
    assert t["hapax"] == sum(1 for c in counts.values() if c == 1)
    # A lower threshold, where VN is not zero on 11 captions.
    t1 = A.table1(run, threshold=1).loc[label]
    assert t1["vn"] == sum(1 for c in counts.values() if c > 1)
    assert t1["vn_dn"] == pytest.approx(t1["vn"] / len(counts))


def test_table1_is_the_report(run: A.Run, report: dict):
    t = A.table1(run)
    assert list(t.index) == [d["label"] for d in report["datasets"]]
    for d in report["datasets"]:
        for col in A.TABLE1_COLUMNS:
            assert t.loc[d["label"], col] == pytest.approx(d[col]), col
    # The formatted table holds the Markdown report's cells.
    md = (Path(run.url) / "report" / "nouns.md").read_text()
    f = A.table1(run, formatted=True)
    for label in LABELS:
        row = f.loc[label]
        assert f"| {label} | " + " | ".join(row) + " |" in md


def test_table1_falls_back_to_the_report(run_dir: Path, tmp_path: Path, report: dict):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "nouns" / "_counts")
    r = A.load_run(str(copy))
    t = A.table1(r)
    assert t.loc["dense", "dn"] == report["datasets"][1]["dn"]
    # another threshold needs the statistics, which are gone
    with pytest.raises(SourceError, match="_counts"):
        A.table1(r, threshold=1)
    # rank/frequency falls back to the loaded nouns lists: the same result
    pd.testing.assert_frame_equal(A.rank_frequency(r), A.rank_frequency(A.load_run(str(run_dir))))


# -- per-caption figures ---------------------------------------------------------------------------


def test_caption_lengths(run: A.Run, shards: dict[str, pd.DataFrame]):
    lengths = A.caption_lengths(run)
    assert list(lengths.columns) == ["key", "label", "words", "tokens", "chars"]
    caps = shards["captions"].set_index("key")
    for label in LABELS:
        part = lengths[lengths["label"] == label].set_index("key")
        text = caps.loc[part.index, f"{label}_caption"]
        # the report's words: whitespace-separated (no caption here is long enough to be cut)
        assert (part["words"] == text.str.split().str.len()).all()
        assert (part["chars"] == text.str.len()).all()
    # the failed sample has a raw caption and no dense one: it is in neither label, so both
    # compare the same images
    assert BROKEN_KEY in set(caps.index) and isinstance(caps.loc[BROKEN_KEY, "raw_caption"], str)
    assert BROKEN_KEY not in set(lengths["key"])
    assert set(lengths[lengths["label"] == "raw"]["key"]) == set(lengths[lengths["label"] == "dense"]["key"])


def test_nouns_per_caption(run: A.Run, shards: dict[str, pd.DataFrame]):
    per = A.nouns_per_caption(run)
    n = shards["nouns"].set_index("key")
    for label in LABELS:
        part = per[per["label"] == label].set_index("key")
        lists = n.loc[part.index, f"{label}_nouns"]
        assert (part["nouns"] == lists.map(len)).all()
        assert (part["distinct_nouns"] == lists.map(lambda x: len(set(x)))).all()
        assert part["nouns"].sum() == A.table1(run).loc[label, "total_nouns"]
    assert (per["distinct_nouns"] <= per["nouns"]).all()


def test_rank_frequency(run: A.Run, shards: dict[str, pd.DataFrame]):
    rf = A.rank_frequency(run)
    for label in LABELS:
        part = rf[rf["label"] == label]
        counts = nouns_of(shards, label)
        assert list(part["rank"]) == list(range(1, len(counts) + 1))
        assert dict(zip(part["noun"], part["frequency"], strict=True)) == dict(counts)
        assert part["frequency"].is_monotonic_decreasing
        assert part["share"].sum() == pytest.approx(1.0)
        docs = Counter(n for nouns in shards["nouns"][f"{label}_nouns"].dropna() for n in set(nouns))
        assert dict(zip(part["noun"], part["captions"], strict=True)) == dict(docs)
    # the same order as the report's CSV of every noun
    csv = pd.read_csv(Path(run.url) / "report" / "nouns.csv")
    assert list(csv["noun"]) == list(rf["noun"])
    assert list(csv["count"]) == list(rf["frequency"])


def test_nouns_gained_lost(run: A.Run, shards: dict[str, pd.DataFrame], report: dict):
    raw, dense = nouns_of(shards, "raw"), nouns_of(shards, "dense")
    full = A.nouns_gained_lost(run, top=None)
    gained = full[full["change"] == "gained"]
    lost = full[full["change"] == "lost"]
    assert set(gained["noun"]) == set(dense) - set(raw)
    assert set(lost["noun"]) == set(raw) - set(dense)
    assert all(dense[w] == c for w, c in zip(gained["noun"], gained["count"], strict=True))
    assert all(raw[w] == c for w, c in zip(lost["noun"], lost["count"], strict=True))
    assert full.attrs == {
        "before": "raw",
        "after": "dense",
        "gained": len(set(dense) - set(raw)),
        "lost": len(set(raw) - set(dense)),
        "shared": len(set(raw) & set(dense)),
    }
    # the report's comparison lists the top 25 of each, in the same order
    cmp = report["comparisons"][0]
    assert (cmp["a"], cmp["b"]) == ("raw", "dense")
    top = A.nouns_gained_lost(run, top=25)
    for change, key in (("gained", "only_b_top"), ("lost", "only_a_top")):
        part = top[top["change"] == change]
        assert [[w, c] for w, c in zip(part["noun"], part["count"], strict=True)] == cmp[key]
    assert len(A.nouns_gained_lost(run, top=3).query("change == 'lost'")) == min(3, len(lost))
    # swapped sides swap the result
    swapped = A.nouns_gained_lost(run, top=None, before="dense", after="raw")
    assert set(swapped[swapped.change == "gained"]["noun"]) == set(lost["noun"])


def test_unknown_label_is_refused(run: A.Run):
    with pytest.raises(ConfigError, match="'raw', 'dense'"):
        A.nouns_gained_lost(run, before="laion", after="dense")


# -- gallery ---------------------------------------------------------------------------------------


def test_gallery_draws_good_samples_with_their_images(run: A.Run, shards: dict[str, pd.DataFrame]):
    from PIL import Image

    from recaption.images.decode import decode_image
    from recaption.readers.base import ImageRef

    items = A.gallery(run, n=4, seed=1, size=64)
    assert len(items) == 4
    assert len({it.key for it in items}) == 4
    caps = shards["captions"].set_index("key")
    for it in items:
        row = caps.loc[it.key]
        assert it.key != BROKEN_KEY
        assert (it.raw_caption, it.dense_caption) == (row["raw_caption"], row["dense_caption"])
        assert (it.width, it.height) == (row["width"], row["height"])
        assert max(it.image.size) <= 64
        assert it.image.width / it.image.height == pytest.approx(it.width / it.height, rel=0.05)
        # the thumbnail is the referenced image, shrunk
        ref = ImageRef(
            row["image_uri"], row["image_member"], int(row["image_offset"]), int(row["image_length"])
        )
        full = decode_image(ref.read()).image
        expected = full.copy()
        expected.thumbnail(it.image.size, Image.Resampling.BICUBIC)
        assert expected.size == it.image.size
        # the same picture, not only the same size (JPEG draft decoding moves pixels a little)
        diff = np.abs(np.asarray(expected, dtype=np.int16) - np.asarray(it.image, dtype=np.int16))
        assert diff.mean() < 6, (it.key, diff.mean())
    # deterministic by seed
    assert [it.key for it in A.gallery(run, n=4, seed=1, size=64)] == [it.key for it in items]
    # asking for more than there is gives every good sample once, never the broken one
    every = A.gallery(run, n=100, size=32)
    assert sorted(it.key for it in every) == sorted(k for k in caps.index if k != BROKEN_KEY)


def test_gallery_skips_images_that_no_longer_open(run: A.Run, tmp_path: Path, caplog):
    caps = run.captions.copy()
    gone = caps["key"].iloc[0]
    caps.loc[caps["key"] == gone, "image_uri"] = str(tmp_path / "moved.tar")
    moved = A.Run(
        url=run.url,
        captions=caps,
        nouns=run.nouns,
        report=run.report,
        summary=run.summary,
        config=run.config,
        labels=run.labels,
    )
    with caplog.at_level("WARNING", logger="recaption.analysis"):
        items = A.gallery(moved, n=100, size=32)
    assert len(items) == 9
    assert gone not in {it.key for it in items}
    assert gone in caplog.text


def test_gallery_html(run: A.Run):
    items = A.gallery(run, n=3, size=32)
    items[0].raw_caption = "<b>fish & chips</b>"
    page = A.gallery_html(items)
    assert page.count("<img ") == 3
    assert "&lt;b&gt;fish &amp; chips&lt;/b&gt;" in page
    assert all(it.key in page for it in items)
    assert page.count("data:image/jpeg;base64,") == 3


# -- plots -----------------------------------------------------------------------------------------


def test_plots_draw_the_data(run: A.Run):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4)
    try:
        A.plot_caption_lengths(axes[0], run)
        lengths = A.caption_lengths(run)
        for container, label in zip(axes[0].containers, LABELS, strict=True):
            # every caption falls in one bar
            assert sum(p.get_height() for p in container) == (lengths["label"] == label).sum()
        A.plot_nouns_per_caption(axes[1], run)
        per = A.nouns_per_caption(run)
        bars = axes[1].containers[1]
        centres = [p.get_x() + p.get_width() / 2 for p in bars]
        hist = per[per["label"] == "dense"]["nouns"].value_counts()
        assert {round(c): h for c, h in zip(centres, (p.get_height() for p in bars), strict=True) if h} == {
            int(k): v for k, v in hist.items()
        }
        rf = A.rank_frequency(run)
        A.plot_rank_frequency(axes[2], rf)
        assert (axes[2].get_xscale(), axes[2].get_yscale()) == ("log", "log")
        for line, label in zip(axes[2].get_lines(), LABELS, strict=True):
            assert list(line.get_ydata()) == list(rf[rf["label"] == label]["frequency"])
        gl = A.nouns_gained_lost(run, top=None)
        A.plot_gained_lost(axes[3], gl, "lost", top=5)
        widths = [p.get_width() for p in axes[3].patches]
        assert widths == list(gl[gl.change == "lost"]["count"].head(5))[::-1]
        assert "in raw" in axes[3].get_title()
    finally:
        plt.close(fig)


def test_module_does_not_import_matplotlib():
    code = "import sys, recaption.analysis; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
