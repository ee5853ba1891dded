"""Reports of noun statistics: JSON (every figure), Markdown (Table 1's layout), CSV, terminal.

All four are built from one report dict (:func:`build_report`), so they always agree. Datasets
are labelled (``LAION``, ``SAM-LLaVA``, the raw and dense columns of one caption run...) and
shown side by side in the order given.
"""

from __future__ import annotations

import csv
import io as _stdio
from collections.abc import Mapping
from itertools import combinations
from typing import Any, NotRequired, TypedDict

from recaption.nouns.stats import (
    DEFAULT_THRESHOLD,
    PIXART_ROW_CAPTIONS,
    IncompatibleStatsError,
    NounStats,
    compare,
)

REPORT_FORMAT = "recaption.nouns.report/1"
REPORT_FILES = {"json": "nouns.json", "markdown": "nouns.md", "csv": "nouns.csv"}


class PaperRow(TypedDict):
    """One row of PixArt-α's Table 1 as published."""

    label: str
    vn: int
    dn: int
    total_nouns: int
    average: float
    vn_dn: NotRequired[str]  # the cell as printed; else computed from vn and dn


#: PixArt-α's published Table 1 (NLTK, options unpublished), shown for reference only.
#: ``vn_dn`` is the cell as printed (its shares come from the unrounded counts: 85K/646K is 13.2%,
#: the paper prints 13.3%).
PIXART_TABLE1: list[PaperRow] = [
    {
        "label": "LAION",
        "vn": 210_000,
        "dn": 2_461_000,
        "total_nouns": 72_000_000,
        "average": 6.4,
        "vn_dn": "210K/2461K = 8.5%",
    },
    {
        "label": "LAION-LLaVA",
        "vn": 85_000,
        "dn": 646_000,
        "total_nouns": 233_900_000,
        "average": 20.9,
        "vn_dn": "85K/646K = 13.3%",
    },
    {
        "label": "SAM-LLaVA",
        "vn": 23_000,
        "dn": 124_000,
        "total_nouns": 327_900_000,
        "average": 29.3,
        "vn_dn": "23K/124K = 18.6%",
    },
    {
        "label": "Internal",
        "vn": 152_000,
        "dn": 582_000,
        "total_nouns": 136_600_000,
        "average": 12.2,
        "vn_dn": "152K/582K = 26.1%",
    },
]


def threshold_notes(threshold: float) -> dict[str, Any]:
    """What the thresholds mean, stated in every report."""
    return {
        "T": threshold,
        "vn": f"VN = distinct nouns appearing more than T = {threshold:g} times (PixArt-α, Table 1)",
        "reference_captions": PIXART_ROW_CAPTIONS,
        "scaled": (
            f"VN_scaled uses T_N = max(1, T * N / {PIXART_ROW_CAPTIONS:,}) for N captions: the "
            f"paper's rate (T occurrences per ~11.2M captions, the size of its rows) where that is "
            f"at least 1; below N = {PIXART_ROW_CAPTIONS / max(threshold, 1e-9):,.0f} the floor of 1 "
            "applies and VN_scaled means 'nouns seen at least twice'"
        ),
        "matched": (
            "comparisons rarefy the larger dataset to the smaller one's caption count (expected "
            "VN and DN of a random subsample, counts thinned binomially) and use one threshold, "
            "the scaled T at that count, for both"
        ),
    }


def build_report(
    stats: Mapping[str, NounStats],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    top_k: int = 25,
    sources: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The report as one JSON-ready dict: options, threshold meanings, one row per label, and a
    comparison for every pair of labels (in the order given)."""
    if not stats:
        raise ValueError("build_report needs at least one labelled NounStats")
    labels = list(stats)
    options = stats[labels[0]].options
    for label in labels[1:]:
        if stats[label].options != options:
            raise IncompatibleStatsError(
                f"{labels[0]!r} and {label!r} were counted with different noun options; "
                "count every dataset of one report with the same options"
            )
    from recaption import __version__

    return {
        "format": REPORT_FORMAT,
        "recaption_version": __version__,
        "options": options,
        "threshold": threshold_notes(threshold),
        "datasets": [
            {
                **stats[label].table1(threshold, top_k=top_k, label=label).to_dict(),
                **({"source": sources[label]} if sources and label in sources else {}),
            }
            for label in labels
        ],
        "comparisons": [
            compare(stats[a], stats[b], label_a=a, label_b=b, threshold=threshold, top_k=top_k).to_dict()
            for a, b in combinations(labels, 2)
        ],
        "paper_reference": {
            "source": "PixArt-α (arXiv 2310.00426), Table 1; NLTK, choices unpublished",
            "rows": PIXART_TABLE1,
        },
    }


# -- formatting -----------------------------------------------------------------------------------


def human(n: float) -> str:
    """Counts as the paper writes them: 72.0M, 210K, or exact below 10,000."""
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1_000:.0f}K"
    if float(n).is_integer():
        return f"{int(n):,}"
    return f"{n:,.1f}"


def thousands(n: float) -> str:
    """Distinct-noun counts as the paper writes them: 2461K, 85K, or exact below 10,000."""
    if n >= 10_000:
        return f"{n / 1_000:.0f}K"
    return human(n)


def vn_dn_cell(vn: float, dn: float) -> str:
    """``210K/2461K = 8.5%``."""
    share = 100.0 * vn / dn if dn else 0.0
    return f"{thousands(vn)}/{thousands(dn)} = {share:.1f}%"


MAIN_COLUMNS = (
    "Dataset",
    "VN/DN",
    "Total Noun",
    "Average",
    "VN/DN at scaled T",
    "Nouns / 100 words",
    "Distinct nouns / caption",
    "Words / caption",
    "Tokens / caption",
    "Captions",
)

# The same columns, shorter, for a terminal.
RICH_HEADERS = (
    "Dataset",
    "VN/DN",
    "Total",
    "Average",
    "VN/DN at T_N",
    "Nouns/100 words",
    "DN/caption",
    "Words/caption",
    "Tokens/caption",
    "Captions",
)

PROBLEM_COLUMNS = ("Dataset", "Captions", "Empty", "Truncated", "Non-UTF-8 (replaced)", "Non-Latin")


def main_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """The main table's cells, one row per dataset, columns as :data:`MAIN_COLUMNS`."""
    rows = []
    for d in report["datasets"]:
        rows.append(
            [
                d["label"],
                vn_dn_cell(d["vn"], d["dn"]),
                human(d["total_nouns"]),
                f"{d['nouns_per_caption']:.1f}/img",
                f"{vn_dn_cell(d['vn_scaled'], d['dn'])} (T={d['scaled_threshold']:g})",
                f"{d['nouns_per_100_words']:.1f}",
                f"{d['distinct_nouns_per_caption']:.1f}",
                f"{d['words_per_caption']:.1f}",
                f"{d['tokens_per_caption']:.1f}",
                f"{d['captions']:,}",
            ]
        )
    return rows


def problem_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """Counts of odd captions per dataset, columns as :data:`PROBLEM_COLUMNS`."""
    return [
        [
            d["label"],
            f"{d['captions']:,}",
            f"{d['empty']:,}",
            f"{d['truncated']:,}",
            f"{d['replaced']:,}",
            f"{d['non_latin']:,}",
        ]
        for d in report["datasets"]
    ]


def _md_table(header: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |"]
    lines.append("| " + " | ".join("---" if i < right_from else "---:" for i in range(len(header))) + " |")
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines


def to_markdown(report: Mapping[str, Any]) -> str:
    """The report in PixArt's Table 1 layout, with the extra columns, notes and options."""
    t = report["threshold"]
    lines = ["# Noun statistics (PixArt-α Table 1 layout)", ""]
    lines += _md_table(list(MAIN_COLUMNS), main_rows(report))
    lines += [
        "",
        f"- {t['vn']}; DN = distinct nouns; Average = nouns per caption (image).",
        f"- {t['scaled']}.",
        "",
        "### Input problems",
        "",
        "Empty or whitespace captions count as captions with zero nouns; captions over "
        f"{report['options'].get('max_chars', '?')} characters are cut and counted as truncated; "
        "undecodable bytes become U+FFFD (counted as non-UTF-8); non-Latin captions are counted "
        "as usual and flagged.",
        "",
        *_md_table(list(PROBLEM_COLUMNS), problem_rows(report)),
        "",
    ]
    if report["comparisons"]:
        lines += ["## Matched comparisons", "", f"{t['matched']}.", ""]
        header = ["A", "B", "Matched captions", "T", "VN/DN of A", "VN/DN of B", "Shared", "Only A", "Only B"]
        rows = [
            [
                c["a"],
                c["b"],
                f"{c['matched_captions']:,}",
                f"{c['matched_threshold']:g}",
                vn_dn_cell(c["a_expected_vn"], c["a_expected_dn"]),
                vn_dn_cell(c["b_expected_vn"], c["b_expected_dn"]),
                f"{c['shared']:,}",
                f"{c['only_a']:,}",
                f"{c['only_b']:,}",
            ]
            for c in report["comparisons"]
        ]
        lines += _md_table(header, rows, right_from=2)
        lines.append("")
        for c in report["comparisons"]:
            for side, other, key in ((c["a"], c["b"], "only_a_top"), (c["b"], c["a"], "only_b_top")):
                top = ", ".join(f"{noun} ({count:,})" for noun, count in c[key]) or "(none)"
                lines.append(f"- In {side}, not in {other}: {top}")
        lines.append("")
    datasets = report["datasets"]
    depth = max((len(d["top_nouns"]) for d in datasets), default=0)
    if depth:
        lines += ["## Most frequent nouns", ""]
        rows = []
        for i in range(depth):
            row = [str(i + 1)]
            for d in datasets:
                top = d["top_nouns"]
                row.append(f"{top[i][0]} ({top[i][1]:,})" if i < len(top) else "")
            rows.append(row)
        lines += _md_table(["Rank", *(d["label"] for d in datasets)], rows, right_from=len(datasets) + 1)
        lines.append("")
    lines += ["## Options", ""]
    for key, value in report["options"].items():
        if key == "notes":
            continue
        lines.append(f"- `{key}`: `{value}`")
    lines += [f"- {note}" for note in report["options"].get("notes", [])]
    lines += ["", "## PixArt-α's published Table 1 (reference)", "", report["paper_reference"]["source"], ""]
    rows = [
        [
            r["label"],
            r.get("vn_dn") or vn_dn_cell(r["vn"], r["dn"]),
            human(r["total_nouns"]),
            f"{r['average']}/img",
        ]
        for r in report["paper_reference"]["rows"]
    ]
    lines += _md_table(["Dataset", "VN/DN", "Total Noun", "Average"], rows)
    return "\n".join(lines) + "\n"


def to_csv(stats: Mapping[str, NounStats]) -> str:
    """Every noun of every label: ``label, rank, noun, count, captions, share`` (share of the
    label's noun occurrences), most frequent first."""
    buf = _stdio.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["label", "rank", "noun", "count", "captions", "share"])
    for label, s in stats.items():
        ranked = sorted(s.noun_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        total = s.total_nouns or 1
        for rank, (noun, count) in enumerate(ranked, start=1):
            writer.writerow([label, rank, noun, count, s.doc_freq[noun], f"{count / total:.6g}"])
    return buf.getvalue()


def rich_table(report: Mapping[str, Any]) -> Any:
    """The main table as a ``rich.table.Table`` (for the terminal)."""
    from rich.table import Table

    t = report["threshold"]
    table = Table(
        title="Noun statistics (PixArt-α Table 1 layout)",
        caption=f"VN: nouns seen more than T={t['T']:g} times; T_N = max(1, T·N/11.2M); "
        "DN/caption: distinct nouns per caption",
    )
    for i, col in enumerate(RICH_HEADERS):
        table.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    for row in main_rows(report):
        table.add_row(*row)
    return table


def print_report(report: Mapping[str, Any], console: Any = None) -> None:
    """Print the main table and the matched comparisons to the terminal."""
    from rich.console import Console

    if console is None:
        import sys

        # Outside a terminal (logs, files) rich would wrap at 80 columns, one cell over three lines.
        tty = sys.stdout.isatty()
        console = Console(width=None if tty else 240, soft_wrap=not tty)
    console.print(rich_table(report))
    for row in problem_rows(report):
        console.print(
            f"{row[0]}: {row[2]} empty, {row[3]} truncated, {row[4]} non-UTF-8, {row[5]} non-Latin "
            f"of {row[1]} captions"
        )
    for c in report["comparisons"]:
        console.print(
            f"{c['a']} vs {c['b']} at {c['matched_captions']:,} captions, T={c['matched_threshold']:g}: "
            f"VN/DN {vn_dn_cell(c['a_expected_vn'], c['a_expected_dn'])} vs "
            f"{vn_dn_cell(c['b_expected_vn'], c['b_expected_dn'])}"
        )


def write_reports(
    stats: Mapping[str, NounStats],
    out_dir: str,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    top_k: int = 25,
    sources: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Write ``nouns.json``, ``nouns.md`` and ``nouns.csv`` under ``out_dir`` (any fsspec URL,
    each file written atomically); returns their URLs by kind."""
    import json

    from recaption import io

    report = build_report(stats, threshold=threshold, top_k=top_k, sources=sources)
    io.makedirs(out_dir)
    urls = {kind: io.join(out_dir, name) for kind, name in REPORT_FILES.items()}
    io.write_text_atomic(urls["json"], json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    io.write_text_atomic(urls["markdown"], to_markdown(report))
    io.write_text_atomic(urls["csv"], to_csv(stats))
    return urls
