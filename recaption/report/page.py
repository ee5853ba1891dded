"""The HTML report of a run: one self-contained file (styles inline, charts as SVG, thumbnails as
``data:`` URIs), readable offline in any browser, with no script at all.

Every figure comes from :mod:`recaption.analysis` (as the notebook's do); this module only lays
them out. Every text that comes from the data (captions, keys, reasons, paths) is escaped, and a
Content-Security-Policy forbids scripts and any network request, so a caption holding markup
shows as text and the page never reaches out.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from recaption.analysis import Run

log = logging.getLogger("recaption")

#: Where ``recaption run`` writes the report, inside its output folder.
REPORT_FILE = "report/index.html"

_CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dee7; --bg:#ffffff; --alt:#f5f7fa; --warn:#9a5b00;
        --warnbg:#fff4e0; --bad:#a3161a; --badbg:#fdecec; --ok:#1f6f3d; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); background: var(--bg); margin: 0; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 18px 0 6px; }
p, li { max-width: 80ch; }
.muted, caption, .note { color: var(--muted); }
.note { font-size: 13px; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--alt);
       padding: 1px 4px; border-radius: 3px; overflow-wrap: anywhere; }
nav { margin: 14px 0 0; font-size: 14px; }
nav a { margin-right: 14px; color: #0b5cad; text-decoration: none; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 14px; }
caption { caption-side: bottom; text-align: left; font-size: 13px; padding-top: 4px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: var(--alt); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
tr.group th { background: #e8edf5; font-weight: 600; text-align: left; }
tr.paper td { color: var(--muted); }
td:first-child { white-space: nowrap; }
.scroll { overflow-x: auto; max-width: 100%; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 10px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 150px; }
.card .big { font-size: 24px; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .small { font-size: 13px; color: var(--muted); }
.card.warn { border-color: #e3b15c; background: var(--warnbg); }
.card.bad { border-color: #e28b8d; background: var(--badbg); }
.alert { border-left: 4px solid #e3b15c; background: var(--warnbg); padding: 8px 12px; margin: 8px 0;
         max-width: 100ch; }
.alert.bad { border-left-color: #d0453f; background: var(--badbg); }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
svg.chart { border: 1px solid var(--line); border-radius: 6px; background: #fff; }
svg .grid { stroke: #eceff4; } svg .axis { stroke: #8a93a3; }
svg text { font: 11px system-ui, sans-serif; fill: #3b4352; }
svg .chart-title { font-size: 13px; font-weight: 600; } svg .label { font-size: 12px; }
table.gallery { width: 100%; table-layout: fixed; }
table.gallery td { padding: 10px; }
table.gallery th.img, table.gallery td.img { width: 240px; }
table.gallery img { max-width: 224px; max-height: 224px; border-radius: 4px; display: block; }
table.gallery td:first-child { white-space: normal; }
table.gallery .caption { white-space: pre-wrap; overflow-wrap: anywhere; }
.tag { display: inline-block; font-size: 12px; padding: 0 6px; border-radius: 8px; margin: 2px 2px 0 0;
       background: var(--alt); border: 1px solid var(--line); }
.tag.warn { background: var(--warnbg); border-color: #e3b15c; }
.tag.bad { background: var(--badbg); border-color: #e28b8d; }
"""


# Control characters are HTML parse errors (a NUL becomes U+FFFD, others vanish or break the
# page's text); a caption holding one is itself worth seeing, so each is shown as a visible glyph:
# C0 and DEL as Unicode's control pictures (NUL -> \u2400), C1 as its \x escape.
_VISIBLE_CONTROLS = {c: chr(0x2400 + c) for c in range(0x20) if chr(c) not in "\t\n\r"}
_VISIBLE_CONTROLS |= {0x7F: "\u2421"} | {c: f"\\x{c:02x}" for c in range(0x80, 0xA0)}


def esc(value: object) -> str:
    """Text for HTML content or an attribute value (quotes escaped too; control characters shown
    as visible glyphs)."""
    return html.escape("" if value is None else str(value), quote=True).translate(_VISIBLE_CONTROLS)


def _table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    table_id: str,
    numeric_from: int = 1,
    caption: str = "",
    row_classes: Sequence[str] | None = None,
) -> str:
    head = "".join(
        f'<th scope="col"{" class=num" if i >= numeric_from else ""}>{esc(h)}</th>'
        for i, h in enumerate(header)
    )
    body = []
    for n, row in enumerate(rows):
        cls = f' class="{esc(row_classes[n])}"' if row_classes and row_classes[n] else ""
        cells = "".join(
            f"<td{' class=num' if i >= numeric_from else ''}>{esc(c)}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (
        f'<table id="{esc(table_id)}">{cap}<thead><tr>{head}</tr></thead><tbody>'
        + "".join(body)
        + "</tbody></table>"
    )


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.0f}%" if total else "-"


def _card(big: str, small: str, cls: str = "") -> str:
    return (
        f'<div class="card {cls}"><div class="big">{esc(big)}</div>'
        f'<div class="small">{esc(small)}</div></div>'
    )


# -- sections ---------------------------------------------------------------------------------------


def _overview(run: Run) -> str:
    from recaption.status import run_status

    s = run.summary
    stages = run_status(run.url)["stages"]
    rows = []
    for st in stages:
        rows.append(
            [
                st["stage"] + (" (text)" if str(st["output"]).rstrip("/").endswith("features_text") else ""),
                f"{st['shards_done']}/{st['shards_total']}" + (" done" if st["complete"] else ""),
                f"{st['rows']:,}",
                f"{st['errors']:,}",
                f"{st['warnings']:,}",
            ]
        )
    cfg = run.config
    cap = cfg.get("caption") or {}
    facts = [
        ("source", (cfg.get("source") or {}).get("path")),
        ("caption model", cap.get("model")),
        ("prompt", cap.get("prompt")),
        ("max_new_tokens", cap.get("max_new_tokens")),
        ("encode preset", (cfg.get("encode") or {}).get("preset")),
        ("last run", f"{s.get('images', 0):,} images in {s.get('seconds', 0):.1f} s" if s else None),
        ("recaption", cfg.get("recaption_version")),
    ]
    dl = "".join(
        f"<tr><th>{esc(k)}</th><td><code>{esc(v)}</code></td></tr>" for k, v in facts if v is not None
    )
    return (
        '<section id="overview"><h2>Run</h2><div class="row">'
        + _table(
            ["stage", "shards", "rows", "errors", "warnings"],
            rows,
            table_id="stages-table",
            caption="The whole output folder, over every run into it.",
        )
        + f'<table id="settings-table"><tbody>{dl}</tbody></table></div></section>'
    )


def _quality(run: Run) -> str:
    from recaption.analysis import caption_quality, t5_truncation

    q = caption_quality(run)
    n = q["captions"]
    fr = q["finish_reasons"]
    limit = q["max_new_tokens"]
    cards = [
        _card(f"{n:,}", "caption rows"),
        _card(f"{fr['stop']:,}", f"finished (stop), {_pct(fr['stop'], n)}"),
        _card(
            f"{fr['length']:,}",
            f"hit max_new_tokens{f' = {limit}' if limit else ''} (length), {_pct(fr['length'], n)}",
            "warn" if fr["length"] else "",
        ),
        _card(
            f"{fr['error']:,}", f"no caption (error), {_pct(fr['error'], n)}", "bad" if fr["error"] else ""
        ),
        _card(f"{q['repetition']:,}", "flagged as repetitive loops", "warn" if q["repetition"] else ""),
        _card(f"{q['prompt_fallback']:,}", "prompt fallbacks (empty raw caption)"),
        _card(f"{q['tokens']['mean']:.1f}", f"tokens per caption (max {q['tokens']['max']})"),
    ]
    alerts = []
    if n and fr["length"] / n >= 0.5:
        alerts.append(
            f'<p class="alert">{fr["length"]:,} of {n:,} captions ({_pct(fr["length"], n)}) stopped at '
            f"max_new_tokens{f' = {limit}' if limit else ''}: they are cut off mid-sentence. Raise "
            "<code>caption.max_new_tokens</code> unless that is intended.</p>"
        )
    if n and q["repetition"] / n >= 0.1:
        alerts.append(
            f'<p class="alert">{q["repetition"]:,} captions ({_pct(q["repetition"], n)}) are flagged as '
            "degenerate repetition: look at them below before training on them.</p>"
        )
    if fr["error"]:
        alerts.append(
            f'<p class="alert bad">{fr["error"]:,} samples have no dense caption: see '
            '<a href="#failures">failures by reason</a>.</p>'
        )
    t5 = t5_truncation(run)
    if len(t5):
        t5_html = _table(
            ["caption field", "encoded", "truncated", "share", "empty"],
            [
                [
                    r.field,
                    f"{r.captions:,}",
                    f"{r.truncated:,}",
                    _pct(int(r.truncated), int(r.captions)),
                    f"{r.empty:,}",
                ]
                for r in t5.itertuples()
            ],
            table_id="t5-table",
            caption="Captions longer than the T5 length limit (120 tokens for PixArt-α, 300 for Σ) are "
            "truncated: the model never sees their end.",
        )
    else:
        t5_html = '<p class="muted">No T5 features in this run (encode stage off or not finished).</p>'
    part = "" if run.complete else " (the loaded shards only)"
    return (
        f'<section id="quality"><h2>Caption quality{esc(part)}</h2><div class="cards">{"".join(cards)}</div>'
        + "".join(alerts)
        + _table(
            ["finish reason", "captions", "share"],
            [[k, f"{v:,}", _pct(v, n)] for k, v in fr.items()],
            table_id="finish-table",
            caption="stop: the model ended the caption; length: cut at max_new_tokens (kept, flagged); "
            "error: no caption (see the failures).",
        )
        + "<h3>T5 truncation</h3>"
        + t5_html
        + "</section>"
    )


def _table1(run: Run) -> str:
    from recaption.analysis import table1
    from recaption.nouns.report import PIXART_TABLE1, vn_dn_cell

    try:
        t = table1(run, formatted=True)
    except Exception as e:  # no nouns stage: say so, the rest of the report still stands
        return f'<section id="table1"><h2>Table 1: nouns</h2><p class="muted">{esc(e)}</p></section>'
    header = ["Dataset", *t.columns]
    rows: list[list[str]] = [
        [str(idx), *map(str, r)] for idx, r in zip(t.index, t.values.tolist(), strict=True)
    ]
    classes = [""] * len(rows)
    rows.append(["PixArt-α, Table 1 (published, ≈11.2M captions per row, NLTK)", *[""] * (len(header) - 1)])
    classes.append("group")
    for r in PIXART_TABLE1:
        vn_dn = r.get("vn_dn") or vn_dn_cell(r["vn"], r["dn"])  # as printed in the paper
        cells = [r["label"], vn_dn, _paper_total(r["total_nouns"]), f"{r['average']}/img"]
        rows.append(cells + ["-"] * (len(header) - len(cells)))
        classes.append("paper")
    body = []
    for row, cls in zip(rows, classes, strict=True):
        if cls == "group":
            body.append(f'<tr class="group"><th colspan="{len(header)}">{esc(row[0])}</th></tr>')
            continue
        c = f' class="{cls}"' if cls else ""
        body.append(
            f"<tr{c}>"
            + "".join(f"<td{' class=num' if i else ''}>{esc(v)}</td>" for i, v in enumerate(row))
            + "</tr>"
        )
    head = "".join(f'<th scope="col"{" class=num" if i else ""}>{esc(h)}</th>' for i, h in enumerate(header))
    thr = run.threshold
    return (
        '<section id="table1"><h2>Table 1: nouns, raw against dense captions</h2>'
        f'<div class="scroll"><table id="table1-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody>"
        f"<caption>VN: distinct nouns seen more than T = {thr:g} times; DN: all distinct nouns; Average: "
        "nouns per caption. VN depends on the number of captions: on a small run compare the "
        "&ldquo;at scaled T&rdquo; column, not PixArt's VN. Our counts use spaCy with the options in "
        "<code>report/nouns.md</code>; the paper used NLTK and published no options.</caption></table>"
        "</div></section>"
    )


def _paper_total(n: float) -> str:
    from recaption.nouns.report import human

    return human(n)


def _histograms(run: Run) -> str:
    from recaption.analysis import caption_lengths, nouns_per_caption
    from recaption.report.charts import histogram_svg

    try:
        lengths = caption_lengths(run)
        per = nouns_per_caption(run)
    except Exception as e:
        return f'<section id="histograms"><h2>Lengths</h2><p class="muted">{esc(e)}</p></section>'

    def groups(df: pd.DataFrame, col: str) -> dict[str, list[float]]:
        return {str(k): g[col].tolist() for k, g in df.groupby("label", sort=False)}

    a = histogram_svg(
        groups(lengths, "words"), title="Caption length", xlabel="words per caption", element_id="hist-words"
    )
    b = histogram_svg(
        groups(per, "nouns"), title="Nouns per caption", xlabel="nouns per caption", element_id="hist-nouns"
    )
    return (
        '<section id="histograms"><h2>Caption length and nouns per caption</h2>'
        f'<div class="row">{a}{b}</div></section>'
    )


def _gained_lost(run: Run, top: int = 25) -> str:
    from recaption.analysis import nouns_gained_lost

    try:
        ch = nouns_gained_lost(run, top=top)
    except Exception as e:
        return f'<section id="nouns"><h2>Nouns gained and lost</h2><p class="muted">{esc(e)}</p></section>'
    a = ch.attrs
    tables = []
    for change, where, other in (("gained", a["after"], a["before"]), ("lost", a["before"], a["after"])):
        part = ch[ch["change"] == change]
        tables.append(
            "<div>"
            + f"<h3>{esc(change.capitalize())}: in {esc(where)}, never in {esc(other)} "
            + f"({a[change]:,})</h3>"
            + _table(
                ["#", "noun", "occurrences", "captions"],
                [[r.rank, r.noun, f"{r.count:,}", f"{r.captions:,}"] for r in part.itertuples()]
                or [["", "(none)", "", ""]],
                table_id=f"nouns-{change}-table",
                numeric_from=2,
            )
            + "</div>"
        )
    return (
        '<section id="nouns"><h2>Nouns gained and lost</h2>'
        f"<p>{a['gained']:,} distinct nouns appear only in the {esc(a['after'])} captions, "
        f"{a['lost']:,} only in the {esc(a['before'])} captions, {a['shared']:,} in both.</p>"
        f'<div class="row">{"".join(tables)}</div></section>'
    )


def _failures(run: Run) -> str:
    from recaption.analysis import failure_reasons

    f = failure_reasons(run)
    if not len(f):
        body = '<p id="failures-none">No failures and no warnings in any stage.</p>'
    else:
        body = _table(
            ["stage", "severity", "reason", "count", "example (key: full reason)"],
            [
                [r.stage, r.severity, r.reason, f"{r.count:,}", f"{r.key}: {r.example}"]
                for r in f.itertuples()
            ],
            table_id="failures-table",
            numeric_from=3,
            caption="From the failure manifests (STAGE/_failures/part-*.parquet): one row per sample, "
            "with its key, file and full reason.",
        )
        # the example column is text, not a number
        body = body.replace('<th scope="col" class=num>example', '<th scope="col">example')
    return f'<section id="failures"><h2>Failures and warnings by reason</h2>{body}</section>'


def _gallery(run: Run, n: int, seed: int, size: int) -> str:
    from recaption.analysis import _data_uri, gallery

    items = gallery(run, n=n, seed=seed, size=size) if n > 0 else []
    if not items:
        return '<section id="gallery"><h2>Gallery</h2><p class="muted">No images to show.</p></section>'
    c = run.captions.set_index("key") if run.captions["key"].is_unique else None
    rows = []
    for it in items:
        tags = [f'<span class="tag">{it.width}×{it.height}</span>']
        if it.finish_reason and it.finish_reason != "stop":
            tags.append(f'<span class="tag warn">finish: {esc(it.finish_reason)}</span>')
        if c is not None and it.key in c.index:
            row = c.loc[it.key]
            if bool(row.get("repetition", False)):
                tags.append('<span class="tag warn">repetition</span>')
            if bool(row.get("prompt_fallback", False)):
                tags.append('<span class="tag">prompt fallback</span>')
        raw = it.raw_caption if it.raw_caption is not None else ""
        rows.append(
            f'<tr><td class="img"><img src="{_data_uri(it.image)}" alt="{esc(it.key)}" '
            f'width="{it.image.width}" height="{it.image.height}">'
            f'<div class="note"><code>{esc(it.key)}</code> '
            f"{''.join(tags)}</div></td>"
            f'<td class="caption raw">{esc(raw) if raw else "<span class=muted>(none)</span>"}</td>'
            f'<td class="caption dense">{esc(it.dense_caption)}</td></tr>'
        )
    dense = run.main_caption == "dense_caption"  # else the run's own caption column
    main = "dense caption" if dense else esc(run.main_caption)
    heading = "raw and dense captions" if dense else f"raw captions and {main}"
    return (
        f'<section id="gallery"><h2>Gallery: {len(items)} images, {heading}</h2>'
        '<table id="gallery-table" class="gallery"><thead><tr><th class="img">image</th><th>raw caption</th>'
        f"<th>{main}</th></tr></thead><tbody>{''.join(rows)}</tbody>"
        "<caption>Drawn at random among the samples with a dense caption; images reopened from "
        "their references in the source.</caption></table></section>"
    )


def build_html(run: Run, *, gallery: int = 24, seed: int = 0, thumb: int = 224) -> str:
    """The whole report page as one string (see the module docstring)."""
    sections = [
        _overview(run),
        _quality(run),
        _table1(run),
        _histograms(run),
        _gained_lost(run),
        _failures(run),
        _gallery(run, gallery, seed, thumb),
    ]
    nav = "".join(
        f'<a href="#{a}">{esc(t)}</a>'
        for a, t in (
            ("overview", "Run"),
            ("quality", "Caption quality"),
            ("table1", "Table 1"),
            ("histograms", "Lengths"),
            ("nouns", "Nouns gained/lost"),
            ("failures", "Failures"),
            ("gallery", "Gallery"),
        )
    )
    # No script, no request: a caption with markup cannot run anything, and the file works offline.
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>recaption report: {esc(run.url)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>recaption report</h1><div class=muted><code>{esc(run.url)}</code></div>"
        f'<p class="muted">{esc(run.describe())}</p>'
        f"<nav>{nav}</nav>" + "".join(sections) + "</main></body></html>\n"
    )


def write_report(
    run_url: str, dest: str | None = None, *, gallery: int = 24, seed: int = 0, thumb: int = 224
) -> str:
    """Write the report of the run folder ``run_url`` to ``dest`` (default ``RUN/report/index.html``),
    atomically; returns its URL."""
    from recaption import io
    from recaption.analysis import load_run

    run = load_run(run_url)
    dest = dest or io.join(run.url, REPORT_FILE)
    text = build_html(run, gallery=gallery, seed=seed, thumb=thumb)
    import os.path
    import posixpath

    parent = posixpath.dirname(dest) if "://" in dest else os.path.dirname(os.path.abspath(dest))
    io.makedirs(parent)
    io.write_text_atomic(dest, text)
    return dest
