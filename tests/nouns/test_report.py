from __future__ import annotations

import csv
import io
import json

import pytest

from recaption.nouns.counter import CaptionNouns
from recaption.nouns.options import NounOptions
from recaption.nouns.report import (
    build_report,
    human,
    print_report,
    thousands,
    to_markdown,
    vn_dn_cell,
    write_reports,
)
from recaption.nouns.stats import IncompatibleStatsError, NounStats


def make_stats(rows: list[list[str]], options: NounOptions | None = None) -> NounStats:
    stats = NounStats.for_options(options or NounOptions())
    for nouns in rows:
        stats.add(CaptionNouns(nouns=nouns, n_words=len(nouns) * 4, n_tokens=len(nouns) * 5, n_chars=40))
    return stats


@pytest.fixture
def labelled() -> dict[str, NounStats]:
    raw = make_stats([["shirt", "sale"], ["poster"], [], ["shirt"]])
    dense = make_stats([["dog", "grass", "sky", "dog"], ["dog", "tree", "sky"], ["sky", "cloud", "shirt"]])
    return {"raw": raw, "dense": dense}


def test_human_numbers_as_the_paper_writes_them() -> None:
    assert human(72_000_000) == "72.0M"
    assert human(210_000) == "210K"
    assert human(2_461_000) == "2.5M"
    assert thousands(2_461_000) == "2461K"
    assert human(6) == "6"
    assert human(9_999) == "9,999"
    assert vn_dn_cell(210_000, 2_461_000) == "210K/2461K = 8.5%"


def test_report_files_are_written_and_parse(tmp_path, labelled) -> None:
    urls = write_reports(labelled, str(tmp_path / "out"), threshold=1, top_k=3)
    assert set(urls) == {"json", "markdown", "csv"}

    report = json.loads((tmp_path / "out" / "nouns.json").read_text(encoding="utf-8"))
    assert [d["label"] for d in report["datasets"]] == ["raw", "dense"]
    assert report["options"]["lemmatize"] is True
    assert report["options"]["pos_tags"] == ["NOUN", "PROPN"]
    assert report["threshold"]["T"] == 1
    assert "scaled" in report["threshold"]["scaled"].lower()
    assert "11,200,000" in report["threshold"]["scaled"]
    dense = report["datasets"][1]
    assert dense["dn"] == 6
    assert dense["vn"] == 2  # dog (3) and sky (3) appear more than once
    assert dense["total_nouns"] == 10
    assert dense["top_nouns"][:2] == [["dog", 3], ["sky", 3]]
    [cmp] = report["comparisons"]
    assert (cmp["a"], cmp["b"]) == ("raw", "dense")
    assert cmp["shared"] == 1  # shirt
    assert cmp["matched_captions"] == 3

    md = (tmp_path / "out" / "nouns.md").read_text(encoding="utf-8")
    assert "| Dataset | VN/DN | Total Noun | Average |" in md
    assert "| dense | 2/6 = 33.3% | 10 | 3.3/img |" in md
    assert "| raw | 1/3 = 33.3% | 4 | 1.0/img |" in md
    assert "| Dataset | Captions | Empty | Truncated | Non-UTF-8 (replaced) | Non-Latin |" in md
    assert "| raw | 4 | 0 | 0 | 0 | 0 |" in md
    assert "## Options" in md
    assert "`lemmatize`: `True`" in md
    assert "PixArt-α's published Table 1" in md
    assert "210K/2461K = 8.5%" in md

    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "nouns.csv").read_text(encoding="utf-8"))))
    assert len(rows) == labelled["raw"].distinct_nouns + labelled["dense"].distinct_nouns
    first = rows[0]
    assert first["label"] == "raw"
    assert (first["rank"], first["noun"], first["count"], first["captions"]) == ("1", "shirt", "2", "2")
    assert {r["label"] for r in rows} == {"raw", "dense"}


def test_reports_to_an_fsspec_url(labelled) -> None:
    urls = write_reports(labelled, "memory://nouns-report-test/run")
    from recaption import io as rio

    assert json.loads(rio.read_text(urls["json"]))["format"] == "recaption.nouns.report/1"


def test_report_refuses_mixed_options(labelled) -> None:
    other = make_stats([["dog"]], NounOptions(lemmatize=False))
    with pytest.raises(IncompatibleStatsError, match="different noun options"):
        build_report({"raw": labelled["raw"], "other": other})


def test_terminal_table(labelled) -> None:
    from rich.console import Console

    console = Console(record=True, width=250)
    report = build_report(labelled, threshold=1)
    print_report(report, console=console)
    text = console.export_text()
    assert "raw" in text
    assert "dense" in text
    assert "VN/DN" in text
    assert "raw vs dense" in text
    assert "raw: 0 empty, 0 truncated, 0 non-UTF-8, 0 non-Latin of 4 captions" in text


def test_markdown_escapes_pipes() -> None:
    stats = {"a|b": make_stats([["x", "x"]])}
    md = to_markdown(build_report(stats))
    assert "| a\\|b |" in md
