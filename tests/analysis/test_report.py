"""``recaption report``: the HTML page of a run, checked as text and in a real headless Chromium."""

from __future__ import annotations

import base64
import copy
import io as _stdio
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from recaption import analysis as A
from recaption.cli import app
from recaption.report import build_html
from recaption.report.charts import histogram_svg
from tests.analysis.conftest import BROKEN_KEY

PAYLOAD = '</td><script>alert("x")</script><img src=x onerror=alert(1)> & "quotes"'


class Dom(HTMLParser):
    """Just enough of a DOM: tables by id (their rows' cell texts), images, scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict[str, str | None]] = []
        self.scripts = 0
        self.svgs: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._depth += 1
            if self._depth == 1:
                self._table = a.get("id") or f"anon{len(self.tables)}"
                self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(a)
        elif tag == "script":
            self.scripts += 1
        elif tag == "svg":
            self.svgs.append(a.get("id") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._depth -= 1
            if self._depth == 0:
                self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(text: str) -> Dom:
    d = Dom()
    d.feed(text)
    return d


@pytest.fixture(scope="module")
def run(run_dir: Path) -> A.Run:
    return A.load_run(str(run_dir))


@pytest.fixture(scope="module")
def page(run: A.Run) -> str:
    return build_html(run, gallery=6, seed=1)


def test_run_writes_the_report(run_dir: Path):
    """``recaption run`` ends by writing report/index.html and says so in summary.json."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["html_report"] == str(run_dir / "report" / "index.html")
    dom = parse((run_dir / "report" / "index.html").read_text())
    assert {"stages-table", "finish-table", "table1-table", "gallery-table"} <= set(dom.tables)


def test_table1_is_the_analysis_table_with_pixart_rows(run: A.Run, page: str):
    rows = parse(page).tables["table1-table"]
    expected = A.table1(run, formatted=True)
    assert rows[0] == ["Dataset", *expected.columns]
    for label, row in zip(expected.index, rows[1:3], strict=True):
        assert row == [label, *map(str, expected.loc[label])]
    paper = {r[0]: r for r in rows[4:]}
    # as printed in the paper (13.3%, not 85/646 = 13.2%)
    assert paper["LAION-LLaVA"][1:4] == ["85K/646K = 13.3%", "233.9M", "20.9/img"]
    assert set(paper) == {"LAION", "LAION-LLaVA", "SAM-LLaVA", "Internal"}


def test_finish_reasons_and_failures_match_the_shards(run_dir: Path, page: str):
    shards = pd.read_parquet(run_dir / "captions")
    dom = parse(page)
    finish = {r[0]: int(r[1]) for r in dom.tables["finish-table"][1:]}
    errors = int(shards["error"].notna().sum())
    assert errors == 1
    assert finish["error"] == errors
    assert finish["stop"] + finish["length"] + finish["error"] == len(shards)
    assert finish["length"] == int((shards["finish_reason"] == "length").sum())
    failures = dom.tables["failures-table"]
    assert any(r[0] == "caption" and r[1] == "error" and r[4].startswith(BROKEN_KEY) for r in failures[1:])


def test_histograms_and_gained_lost(run: A.Run, page: str):
    dom = parse(page)
    assert {"hist-words", "hist-nouns"} <= set(dom.svgs)
    gained = dom.tables["nouns-gained-table"][1:]
    expected = A.nouns_gained_lost(run, top=25)
    exp = expected[expected["change"] == "gained"]
    assert len(exp) > 0
    assert [r[1] for r in gained] == list(exp["noun"])
    assert [int(r[2].replace(",", "")) for r in gained] == list(exp["count"])


def test_gallery_images_are_embedded(page: str):
    from PIL import Image

    dom = parse(page)
    srcs = [str(i["src"]) for i in dom.images]
    assert len(srcs) == 6
    assert len(dom.tables["gallery-table"]) == 7  # header + 6
    for src in srcs:
        assert src.startswith("data:image/jpeg;base64,")
        Image.open(_stdio.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page


def test_captions_are_escaped(run: A.Run):
    """A caption holding markup shows as text: no element of it reaches the page."""
    evil = copy.copy(run)
    evil.captions = run.captions.assign(raw_caption=PAYLOAD, dense_caption=PAYLOAD, key=run.captions["key"])
    text = build_html(evil, gallery=3)
    dom = parse(text)
    assert dom.scripts == 0
    assert all(str(i["src"]).startswith("data:image/jpeg;base64,") for i in dom.images)
    cells = dom.tables["gallery-table"][1:]
    assert len(cells) == 3
    assert all(r[1] == PAYLOAD and r[2] == PAYLOAD for r in cells)
    assert "Content-Security-Policy" in text


def test_control_characters_in_captions_are_shown_not_written(run: A.Run):
    """A caption holding NUL, BEL, DEL or a C1 control (a degenerate model's output, a badly
    decoded raw caption) put raw control characters into the page, which HTML parsers drop or turn
    into U+FFFD; each is now a visible glyph, and the page holds no control character at all."""
    odd = copy.copy(run)
    caption = "a\x00b\x07c\x7fd\x85e"
    odd.captions = run.captions.assign(raw_caption=caption, dense_caption=caption, key=run.captions["key"])
    text = build_html(odd, gallery=3)
    controls = {c for c in text if (ord(c) < 0x20 and c not in "\t\n\r") or 0x7F <= ord(c) < 0xA0}
    assert controls == set()
    cells = parse(text).tables["gallery-table"][1:]
    assert all(r[1] == r[2] == "a\u2400b\u2407c\u2421d\\x85e" for r in cells)


def test_histogram_svg_counts_every_value():
    svg = histogram_svg({"a": [1, 1, 2, 7], "b<i>": [2]}, title="t & u", xlabel="x")
    dom = parse(svg)
    assert dom.svgs == [""]
    assert "b&lt;i&gt;" in svg and "<i>" not in svg
    assert svg.count("<rect") == 2 + 3 + 1  # 2 legend swatches + bars: a at 1, 2, 7; b at 2
    assert "a: 2 in [0.5, 1.5)" in svg
    assert "a: 1 in [6.5, 7.5)" in svg


def test_report_command(run_dir: Path, tmp_path: Path):
    out = tmp_path / "r.html"
    r = CliRunner().invoke(app, ["report", str(run_dir), "-o", str(out), "--gallery", "2"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == str(out)
    assert len(parse(out.read_text()).images) == 2
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 2
    assert "not a recaption run folder" in r.output


# -- a real browser ----------------------------------------------------------------------------------


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_in_headless_chromium(run: A.Run, tmp_path: Path):
    """Chromium loads the file and builds the tables and images (its DOM, not our text), and draws
    the page (a screenshot with the thumbnails' colours in it)."""
    from PIL import Image

    evil = copy.copy(run)
    evil.captions = run.captions.assign(raw_caption=PAYLOAD)
    path = tmp_path / "index.html"
    path.write_text(build_html(evil, gallery=4))
    exe = str(_chromium())
    dom_text = subprocess.run(
        [exe, *CHROMIUM_FLAGS, "--dump-dom", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    dom = parse(dom_text)
    assert {"stages-table", "finish-table", "table1-table", "gallery-table"} <= set(dom.tables)
    assert len(dom.tables["table1-table"]) >= 7  # header, raw, dense, group row, PixArt's 4
    assert len(dom.images) == 4
    assert dom.scripts == 0  # the payload stayed text in the browser's DOM too
    assert [r[1] for r in dom.tables["gallery-table"][1:]] == [PAYLOAD] * 4
    shot = tmp_path / "shot.png"
    subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--screenshot={shot}", "--window-size=1400,2000", path.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    im = Image.open(shot).convert("RGB")
    assert im.size == (1400, 2000)
    colours = im.resize((140, 200)).getcolors(maxcolors=140 * 200) or []
    assert len(colours) > 50  # text, tables and charts drawn, not a blank or error page
