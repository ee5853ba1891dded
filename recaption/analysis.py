"""Caption-quality analysis of a ``recaption run`` output folder: raw against dense captions.

The functions here do the work behind ``notebooks/compare_captions.ipynb`` (which only calls them
and shows the results), so every figure of the notebook is tested code:

- :func:`load_run` reads a run folder (any fsspec URL): caption shards, nouns shards, the nouns
  report, ``summary.json`` and ``pipeline.yaml``;
- :func:`table1` is PixArt's Table 1 for each label (``raw``, ``dense``), merged exactly from the
  per-shard statistics (``nouns/_counts``), the same numbers ``report/nouns.json`` shows;
- :func:`caption_lengths`, :func:`nouns_per_caption`, :func:`rank_frequency` and
  :func:`nouns_gained_lost` are tidy DataFrames for plots and tables;
- :func:`caption_quality`, :func:`t5_truncation` and :func:`failure_reasons` say how the captions
  came out: finish reasons, repetition, prompt fallbacks, T5 truncation, failures by reason;
- :func:`gallery` reopens a few images from their references for a side-by-side look;
- ``plot_*`` draw on a matplotlib ``Axes`` the caller made. matplotlib is a notebook extra, so
  nothing here imports it at module level (the plotting functions only call methods of the Axes).
"""

from __future__ import annotations

import base64
import html
import io as _stdio
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from recaption import io
from recaption.errors import ConfigError, SourceError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from PIL import Image

    from recaption.nouns.stats import NounStats

log = logging.getLogger("recaption.analysis")

#: What a run folder holds, for the error when a folder is not one.
RUN_FILES = ("pipeline.yaml", "captions/_stage.json", "captions/part-*.parquet")
#: The nouns stage's columns per label are ``<prefix><name>``; these are the per-caption counts.
_COUNT_COLUMNS = ("n_nouns", "n_words", "n_tokens", "n_chars")
#: Table 1's own columns first, then the extra figures of the report (see recaption.nouns.stats).
TABLE1_COLUMNS = (
    "captions",
    "vn",
    "dn",
    "vn_dn",
    "total_nouns",
    "nouns_per_caption",
    "threshold",
    "scaled_threshold",
    "vn_scaled",
    "vn_scaled_dn",
    "hapax",
    "nouns_per_100_words",
    "distinct_nouns_per_caption",
    "nouns_median",
    "words_per_caption",
    "words_median",
    "words_p95",
    "tokens_per_caption",
    "tokens_median",
    "empty",
    "truncated",
    "replaced",
    "non_latin",
)


@dataclass
class Run:
    """One run folder, loaded.

    ``captions`` holds the caption shards' rows; ``nouns`` the nouns shards' rows merged on
    ``key`` with the caption columns they lack (size, image reference, finish reason, error...),
    so one frame has every per-sample figure. Both carry a ``shard`` column (the part number).
    ``report`` is ``report/nouns.json`` (empty when the run had no nouns stage), ``summary`` is
    ``summary.json`` and ``config`` the resolved ``pipeline.yaml``.
    """

    url: str
    captions: pd.DataFrame = field(repr=False)
    nouns: pd.DataFrame = field(repr=False)
    report: dict[str, Any] = field(repr=False)
    summary: dict[str, Any] = field(repr=False)
    config: dict[str, Any] = field(repr=False)
    #: compared caption columns, in the nouns stage's order (``raw``, ``dense`` by default)
    labels: list[str] = field(default_factory=list)
    #: ``False`` when only the first shards were read (``load_run(..., shards=N)``)
    complete: bool = True
    #: the generated caption column analysed as ``dense_caption`` (another where the run has none)
    main_caption: str = "dense_caption"
    _stats: dict[str, NounStats] | None = field(default=None, repr=False, compare=False)

    @property
    def captions_url(self) -> str:
        return io.join(self.url, "captions")

    @property
    def nouns_url(self) -> str:
        return io.join(self.url, "nouns")

    @property
    def threshold(self) -> float:
        """The VN threshold T of the run's report (the run's ``nouns.threshold``; 10 by default)."""
        t = self.report.get("threshold", {}).get("T")
        if t is None:
            t = (self.config.get("nouns") or {}).get("threshold", 10)
        return float(t)

    def prefix(self, label: str) -> str:
        """The prefix of ``label``'s columns in :attr:`nouns` (``raw`` → ``raw_``)."""
        from recaption.nouns.stage import label_column

        self._check_label(label)
        return label_column(label)

    def _check_label(self, label: str) -> None:
        if label not in self.labels:
            raise ConfigError("label", label, self.labels or "(none: the run has no nouns output)")

    def noun_stats(self) -> dict[str, NounStats]:
        """Per label, the exact statistics of every finished nouns shard (``nouns/_counts``).

        These cover the whole run even when :func:`load_run` read only a few shards' rows.
        Merged once and kept.
        """
        if self._stats is None:
            from recaption.nouns.stage import merge_counts

            if not io.exists(io.join(self.nouns_url, "_counts")):
                raise SourceError(
                    self.nouns_url,
                    "no per-shard noun statistics (the run had no nouns stage, or none finished)",
                    ["_counts/part-*.json"],
                )
            self._stats = merge_counts(self.nouns_url)
        return self._stats

    def failed(self) -> pd.DataFrame:
        """Caption rows without a dense caption (``error`` says why)."""
        c = self.captions
        return c[c["error"].notna() | c["dense_caption"].isna()]

    def describe(self) -> str:
        """One paragraph: where the run is, how many samples, labels, failures."""
        n = len(self.captions)
        bad = len(self.failed())
        stages = ", ".join(self.summary.get("stages", {})) or "?"
        part = "" if self.complete else " (first shards only)"
        return (
            f"{self.url}: {n:,} caption rows{part}, {bad:,} without a dense caption; stages: {stages}; "
            f"labels: {', '.join(self.labels) or '(no nouns)'}"
        )


# -- loading ---------------------------------------------------------------------------------------


def _read_json(url: str) -> dict[str, Any]:
    return json.loads(io.read_text(url)) if io.exists(url) else {}


def _read_parts(url: str, limit: int | None) -> pd.DataFrame:
    """The data shards of a stage folder as one frame, with a ``shard`` column (fsspec reads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recaption.shards.layout import PART_RE, StageDir

    files = [u for u in StageDir(url).data_files() if not io.is_tmp(u)]
    files.sort(key=lambda u: int(PART_RE.match(io.basename(u)).group(1)))  # type: ignore[union-attr]
    if limit is not None:
        files = files[:limit]
    tables = []
    for u in files:
        with io.open_file(u, "rb") as f:
            t = pq.read_table(f)
        shard = int(PART_RE.match(io.basename(u)).group(1))  # type: ignore[union-attr]
        tables.append(t.append_column("shard", pa.array([shard] * t.num_rows, pa.int32())))
    if not tables:
        return pd.DataFrame()
    # Shards of one stage share a schema; promote anyway so an older shard with a missing
    # nullable column still reads.
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def _labels(nouns_url: str, report: dict[str, Any]) -> list[str]:
    record = _read_json(io.join(nouns_url, "_stage.json"))
    inputs = record.get("fingerprint", {}).get("inputs", [])
    labels = [label for i in inputs for _, label in i.get("columns", [])]
    return labels or [d["label"] for d in report.get("datasets", [])]


def load_run(out: str, *, shards: int | None = None) -> Run:
    """Load a ``recaption run`` output folder (a local path or any fsspec URL).

    ``shards`` reads only the first ``shards`` caption and nouns shards' rows, for a look at a
    large run; :func:`table1` and :func:`rank_frequency` still cover every shard, since they use
    the per-shard statistics. Raises :class:`~recaption.errors.SourceError` naming the path when
    the folder is not a run folder.
    """
    import yaml

    from recaption.shards.layout import StageDir

    url = str(out).rstrip("/") or str(out)
    captions_url = io.join(url, "captions")
    if not io.isdir(url):
        raise SourceError(url, "no such folder: not a recaption run folder", list(RUN_FILES))
    if not io.exists(io.join(captions_url, "_stage.json")):
        raise SourceError(
            url,
            "not a recaption run folder (no caption stage output; give the folder passed to "
            "`recaption run --output`)",
            list(RUN_FILES),
        )
    captions = _read_parts(captions_url, shards)
    if captions.empty:
        raise SourceError(captions_url, "no finished caption shards yet", ["part-*.parquet"])
    captions, main_caption = _with_main_caption(captions, captions_url)
    report = _read_json(io.join(url, "report", "nouns.json"))
    summary = _read_json(io.join(url, "summary.json"))
    cfg_url = io.join(url, "pipeline.yaml")
    config = (yaml.safe_load(io.read_text(cfg_url)) or {}) if io.exists(cfg_url) else {}
    nouns_url = io.join(url, "nouns")
    nouns = _read_parts(nouns_url, shards) if io.exists(nouns_url) else pd.DataFrame()
    labels = _labels(nouns_url, report) if not nouns.empty or report else []
    if not nouns.empty:
        extra = ["key", *(c for c in captions.columns if c not in nouns.columns)]
        # Keys are unique within a source; the shard number disambiguates where they are not
        # (nouns shard i is caption shard i in a pipeline run).
        on = ["key"] if captions["key"].is_unique else ["shard", "key"]
        nouns = nouns.merge(captions[[*extra, *(["shard"] if "shard" in on else [])]], on=on, how="left")
    total = len(StageDir(captions_url).data_files())
    return Run(
        url=url,
        captions=captions,
        nouns=nouns,
        report=report,
        summary=summary,
        config=config,
        labels=labels,
        complete=shards is None or shards >= total,
        main_caption=main_caption,
    )


# a caption column's metadata, under the plain names for dense_caption and ``C_<name>`` for column C
_CAPTION_META = (
    "prompt",
    "prompt_name",
    "prompt_fallback",
    "num_tokens",
    "finish_reason",
    "repetition",
    "repetition_score",
    "error",
    "attempts",
    "retry_reason",
)


def _with_main_caption(captions: pd.DataFrame, captions_url: str) -> tuple[pd.DataFrame, str]:
    """A run without ``dense_caption`` (its prompts all named other columns: ``--prompt x=sam``) is
    analysed on its first caption column, under the plain names the analysis reads (``x`` as
    ``dense_caption``, ``x_error`` as ``error``...); the run's own columns stay as they are."""
    if "dense_caption" in captions.columns:
        return captions, "dense_caption"
    from recaption.shards.inputs import caption_run_columns

    main = caption_run_columns(captions_url)[1]
    if main not in captions.columns:
        return captions, "dense_caption"
    captions = captions.copy()
    captions["dense_caption"] = captions[main]
    for name in _CAPTION_META:
        if f"{main}_{name}" in captions.columns and name not in captions.columns:
            captions[name] = captions[f"{main}_{name}"]
    return captions, main


def _require_nouns(run: Run) -> None:
    if run.nouns.empty or not run.labels:
        raise SourceError(
            run.nouns_url,
            "no nouns shards: this run had no nouns stage (nouns.enabled: false) or none finished",
            ["part-*.parquet", "_counts/part-*.json"],
        )


def _require_labels(run: Run) -> None:
    if not run.labels:
        _require_nouns(run)


# -- Table 1 ---------------------------------------------------------------------------------------


def table1(run: Run, *, threshold: float | None = None, formatted: bool = False) -> pd.DataFrame:
    """PixArt's Table 1 with the report's extra columns, one row per label (index ``label``).

    Merged exactly from every finished shard's statistics (``nouns/_counts``), with the run's
    threshold T unless ``threshold`` is given, so the numbers are those of ``report/nouns.json``.
    A run folder copied without its ``_counts`` falls back to the report itself (only at the
    report's own threshold).

    ``formatted=True`` gives the cells as the Markdown report writes them (``120/640 = 18.8%``,
    ``6.4/img``...) under the report's column names.
    """
    t = run.threshold if threshold is None else float(threshold)
    try:
        stats = run.noun_stats()
    except SourceError:
        if not run.report.get("datasets") or t != run.threshold:
            raise
        rows = [dict(d) for d in run.report["datasets"]]
    else:
        rows = [s.table1(t, label=label).to_dict() for label, s in stats.items()]
    if formatted:
        from recaption.nouns.report import MAIN_COLUMNS, main_rows

        table = pd.DataFrame(main_rows({"datasets": rows}), columns=list(MAIN_COLUMNS))
        return table.set_index("Dataset")
    table = pd.DataFrame(rows).set_index("label")
    return table[[c for c in TABLE1_COLUMNS if c in table.columns]]


# -- per-caption figures ---------------------------------------------------------------------------


def _per_label(run: Run, columns: dict[str, str]) -> pd.DataFrame:
    """Long frame ``key, label, <columns>`` from the nouns rows; captions a label lacks are dropped
    (a sample with no dense caption has no dense row), as the statistics drop them."""
    _require_nouns(run)
    parts = []
    for label in run.labels:
        p = run.prefix(label)
        src = {f"{p}{c}": name for c, name in columns.items()}
        part = run.nouns[["key", *src]].rename(columns=src)
        part = part[part[next(iter(src.values()))].notna()]
        parts.append(part.assign(label=label))
    out = pd.concat(parts, ignore_index=True)
    for name in columns.values():
        if name != "nouns_list":
            out[name] = out[name].astype("int64")
    return out[["key", "label", *columns.values()]]


def caption_lengths(run: Run) -> pd.DataFrame:
    """Per caption and label: ``words`` (whitespace-separated, as the report counts them),
    ``tokens`` (spaCy tokens) and ``chars``. Columns ``key, label, words, tokens, chars``."""
    return _per_label(run, {"n_words": "words", "n_tokens": "tokens", "n_chars": "chars"})


def nouns_per_caption(run: Run) -> pd.DataFrame:
    """Per caption and label: ``nouns`` (occurrences) and ``distinct_nouns``.
    Columns ``key, label, nouns, distinct_nouns``."""
    out = _per_label(run, {"n_nouns": "nouns", "nouns": "nouns_list"})
    out["distinct_nouns"] = [len(set(x)) for x in out.pop("nouns_list")]
    return out


# -- noun frequencies ------------------------------------------------------------------------------


def _counts(run: Run, label: str) -> tuple[Counter[str], Counter[str]]:
    """(occurrences, captions containing it) per noun of ``label``: from the statistics of the
    whole run; from the loaded rows when the statistics are missing."""
    run._check_label(label)
    try:
        s = run.noun_stats()[label]
        return s.noun_counts, s.doc_freq
    except (SourceError, KeyError):
        _require_nouns(run)
        lists = run.nouns[f"{run.prefix(label)}nouns"].dropna()
        counts: Counter[str] = Counter()
        docs: Counter[str] = Counter()
        for nouns in lists:
            counts.update(nouns)
            docs.update(set(nouns))
        return counts, docs


def _ranked(counts: Counter[str], nouns: set[str] | None = None) -> list[tuple[str, int]]:
    # Ties broken by the noun, as the report and its CSV do: the order is deterministic.
    items = counts.items() if nouns is None else ((n, counts[n]) for n in nouns)
    return sorted(items, key=lambda kv: (-kv[1], kv[0]))


def rank_frequency(run: Run) -> pd.DataFrame:
    """Every noun of every label by rank: ``label, rank, noun, frequency, captions, share``.

    ``frequency`` is the noun's occurrences, ``captions`` how many captions hold it, ``share`` its
    part of the label's noun occurrences; ranks start at 1, ties broken by the noun. Plot
    ``frequency`` against ``rank`` on log-log axes (:func:`plot_rank_frequency`): a flatter,
    longer curve is a richer vocabulary.
    """
    _require_labels(run)
    frames = []
    for label in run.labels:
        counts, docs = _counts(run, label)
        ranked = _ranked(counts)
        total = sum(counts.values()) or 1
        frames.append(
            pd.DataFrame(
                {
                    "label": label,
                    "rank": range(1, len(ranked) + 1),
                    "noun": [n for n, _ in ranked],
                    "frequency": [c for _, c in ranked],
                    "captions": [docs[n] for n, _ in ranked],
                    "share": [c / total for _, c in ranked],
                }
            )
        )
    return pd.concat(frames, ignore_index=True).astype({"rank": "int64", "frequency": "int64"})


def nouns_gained_lost(
    run: Run, top: int | None = 30, *, before: str | None = None, after: str | None = None
) -> pd.DataFrame:
    """Nouns the dense captions use and the raw ones never do (``gained``), and the reverse
    (``lost``), most frequent first: ``change, rank, noun, count, captions``.

    ``count`` and ``captions`` are taken where the noun occurs (``after`` for gained, ``before``
    for lost). ``before``/``after`` default to the first two labels (``raw``, ``dense``); ``top``
    keeps that many of each (``None``: all). ``attrs`` holds the full sizes: ``gained``, ``lost``
    and ``shared`` (distinct nouns).
    """
    _require_labels(run)
    if len(run.labels) < 2 and (before is None or after is None):
        raise ConfigError("labels", run.labels, "two compared labels (raw and dense captions)")
    before = before or run.labels[0]
    after = after or run.labels[1]
    a_counts, a_docs = _counts(run, before)
    b_counts, b_docs = _counts(run, after)
    gained = set(b_counts) - set(a_counts)
    lost = set(a_counts) - set(b_counts)
    rows = []
    for change, nouns, counts, docs in (
        ("gained", gained, b_counts, b_docs),
        ("lost", lost, a_counts, a_docs),
    ):
        for rank, (noun, count) in enumerate(_ranked(counts, nouns)[:top], start=1):
            rows.append(
                {"change": change, "rank": rank, "noun": noun, "count": count, "captions": docs[noun]}
            )
    out = pd.DataFrame(rows, columns=["change", "rank", "noun", "count", "captions"])
    out.attrs.update(
        before=before,
        after=after,
        gained=len(gained),
        lost=len(lost),
        shared=len(set(a_counts) & set(b_counts)),
    )
    return out


# -- caption quality -------------------------------------------------------------------------------

#: The finish reasons a caption row can have, in the order reports show them.
FINISH_REASONS = ("stop", "length", "error")


def caption_quality(run: Run) -> dict[str, Any]:
    """How the loaded caption rows came out: ``captions`` (rows), ``finish_reasons`` (``stop``: the
    model ended the caption; ``length``: it hit ``max_new_tokens``, kept and flagged; ``error``: no
    caption), ``repetition`` (degenerate loops flagged), ``prompt_fallback`` (an empty raw caption
    made the raw-caption prompt fall back to the plain one), ``max_new_tokens`` (from the run's
    settings, ``None`` if unknown) and ``tokens`` (mean and maximum generated tokens)."""
    c = run.captions
    finish = c["finish_reason"].where(c["finish_reason"].notna(), "error") if "finish_reason" in c else None
    if finish is not None and "error" in c:
        finish = finish.where(c["error"].isna(), "error")
    counts = Counter(finish.astype(str)) if finish is not None else Counter()
    reasons = {r: int(counts.pop(r, 0)) for r in FINISH_REASONS}
    reasons.update({str(k): int(v) for k, v in sorted(counts.items())})  # any other reason, kept visible
    ok_tokens = c.loc[c["error"].isna(), "num_tokens"] if {"error", "num_tokens"} <= set(c) else pd.Series([])

    def flag(col: str) -> int:
        return int(c[col].fillna(False).astype(bool).sum()) if col in c else 0

    return {
        "captions": len(c),
        "finish_reasons": reasons,
        "repetition": flag("repetition"),
        "prompt_fallback": flag("prompt_fallback"),
        "max_new_tokens": (run.config.get("caption") or {}).get("max_new_tokens"),
        "tokens": {
            "mean": round(float(ok_tokens.mean()), 1) if len(ok_tokens) else 0.0,
            "max": int(ok_tokens.max()) if len(ok_tokens) else 0,
        },
    }


def _stage_folders(run: Run) -> dict[str, str]:
    """The run's stage folders that exist, by the name reports use."""
    names = {"caption": "captions", "nouns": "nouns", "encode_text": "features_text", "encode": "features"}
    out = {}
    for name, sub in names.items():
        url = io.join(run.url, sub)
        if io.exists(io.join(url, "_stage.json")):
            out[name] = url
    return out


def t5_truncation(run: Run) -> pd.DataFrame:
    """Per encoded caption field (``dense``, ``raw``): ``captions`` encoded, how many were
    ``truncated`` at the T5 length limit and how many were ``empty``; summed over every finished
    encode shard's counters (the whole run). Empty when the run encoded no text."""
    from recaption.shards.layout import StageDir

    folders = _stage_folders(run)
    url = folders.get("encode_text") or folders.get("encode")
    cols = ["field", "captions", "truncated", "empty"]
    if url is None:
        return pd.DataFrame(columns=cols)
    record = _read_json(io.join(url, "_stage.json"))
    fields = record.get("fingerprint", {}).get("fields") or []
    totals: Counter[str] = Counter()
    for stats in StageDir(url).read_stats():
        totals.update({k: int(v) for k, v in (stats.get("counters") or {}).items()})
    rows = [
        {
            "field": f,
            "captions": totals["encoded"],
            "truncated": totals[f"truncated_{f}"],
            "empty": totals[f"empty_{f}"],
        }
        for f in fields
    ]
    return pd.DataFrame(rows, columns=cols)


def failure_reasons(run: Run) -> pd.DataFrame:
    """Every failure-manifest row of every stage of the run, grouped: ``stage, severity, reason,
    count, example`` (``reason`` is the grouping label of ``recaption status``, ``example`` one
    full reason and ``key`` of that group), most frequent first."""
    from recaption.shards.manifest import read_failures, reason_category

    cols = ["stage", "severity", "reason", "count", "example", "key"]
    frames = []
    for name, url in _stage_folders(run).items():
        f = read_failures(url)
        if len(f):
            frames.append(f.assign(stage=name))
    if not frames:
        return pd.DataFrame(columns=cols)
    f = pd.concat(frames, ignore_index=True)
    f["category"] = f["reason"].astype(str).map(reason_category)
    groups = f.groupby(["stage", "severity", "category"], sort=False)
    out = groups.agg(
        count=("reason", "size"), example=("reason", "first"), key=("key", "first")
    ).reset_index()
    out = out.rename(columns={"category": "reason"}).sort_values(
        ["count", "stage", "reason"], ascending=[False, True, True], kind="stable"
    )
    return out[cols].reset_index(drop=True)


def histogram(values: Any) -> tuple[list[float], str]:
    """Bin edges for a histogram of ``values`` (counts, lengths): one bin per integer while that
    is at most 60 bins, so small counts are not smeared across bins; else 40 equal bins.
    Returns ``(edges, kind)`` with ``kind`` ``"integer"`` or ``"range"``."""
    vals = [float(v) for v in values]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if float(lo).is_integer() and float(hi).is_integer() and hi - lo < 60:
        return [x - 0.5 for x in range(int(lo), int(hi) + 2)], "integer"
    if hi <= lo:
        hi = lo + 1
    step = (hi - lo) / 40
    return [lo + i * step for i in range(41)], "range"


# -- gallery ---------------------------------------------------------------------------------------


@dataclass
class GalleryItem:
    """One sample to look at: a thumbnail and both captions."""

    key: str
    image: Image.Image = field(repr=False)
    raw_caption: str | None
    dense_caption: str | None
    #: the original image size (EXIF orientation applied), as the caption shard records it
    width: int
    height: int
    finish_reason: str | None = None


def _ref(row: Any) -> Any:
    from recaption.readers.base import ImageRef

    def num(v: Any) -> int:
        return -1 if v is None or pd.isna(v) else int(v)

    member = row.image_member
    return ImageRef(
        uri=str(row.image_uri),
        member="" if member is None or pd.isna(member) else str(member),
        offset=num(row.image_offset),
        length=num(row.image_length),
    )


def gallery(run: Run, n: int = 8, seed: int = 0, *, size: int = 384) -> list[GalleryItem]:
    """``n`` samples drawn at random (``seed``) with their image reopened from its reference.

    Failed samples (no dense caption) are never drawn; a sample whose image no longer opens or
    decodes is skipped (logged) and the next one drawn, so fewer than ``n`` come back only when
    the run holds fewer usable samples. Thumbnails fit in ``size`` × ``size``.
    """
    import numpy as np
    from PIL import Image

    from recaption.images.decode import DecodeError, decode_image
    from recaption.readers.refs import ImageOpener, RefError

    c = run.captions
    ok = c[c["error"].isna() & c["dense_caption"].notna() & c["image_uri"].notna()]
    order = np.random.default_rng(seed).permutation(len(ok))
    opener = ImageOpener()
    items: list[GalleryItem] = []
    for i in order:
        if len(items) >= n:
            break
        row = ok.iloc[int(i)]
        try:
            # Draft mode: a JPEG decodes straight at about thumbnail size, several times faster.
            img = decode_image(opener.read(_ref(row)), draft_min_size=(size, size)).image
        except (RefError, DecodeError) as e:
            log.warning("gallery: skipping %s: %s", row.key, e.reason)
            continue
        img.thumbnail((size, size), Image.Resampling.BICUBIC)
        items.append(
            GalleryItem(
                key=str(row.key),
                image=img,
                raw_caption=None if pd.isna(row.raw_caption) else str(row.raw_caption),
                dense_caption=str(row.dense_caption),
                width=int(row.width),
                height=int(row.height),
                finish_reason=None if pd.isna(row.finish_reason) else str(row.finish_reason),
            )
        )
    return items


def _data_uri(img: Image.Image) -> str:
    buf = _stdio.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def gallery_html(items: list[GalleryItem], *, labels: tuple[str, str] = ("raw", "dense")) -> str:
    """A table with one row per item: the image, then the raw and the dense caption side by side
    (text escaped; images inlined, so the notebook stays self-contained)."""
    cell = 'style="vertical-align:top;text-align:left;white-space:pre-wrap;max-width:32em"'
    head = "".join(f"<th {cell}>{html.escape(label)}</th>" for label in labels)
    rows = [f"<tr><th>image</th>{head}</tr>"]
    for it in items:
        note = f"{html.escape(it.key)}<br>{it.width}×{it.height}"
        if it.finish_reason and it.finish_reason != "stop":
            note += f"<br>finish: {html.escape(it.finish_reason)}"
        img = f'<img src="{_data_uri(it.image)}" alt="{html.escape(it.key)}">'
        rows.append(
            f'<tr><td style="vertical-align:top">{img}<br><small>{note}</small></td>'
            f"<td {cell}>{html.escape(it.raw_caption or '(none)')}</td>"
            f"<td {cell}>{html.escape(it.dense_caption or '(none)')}</td></tr>"
        )
    return '<table class="recaption-gallery">' + "".join(rows) + "</table>"


# -- plots (matplotlib Axes from the caller; nothing here imports matplotlib) ----------------------


def plot_histograms(
    ax: Axes, data: pd.DataFrame, column: str, *, title: str = "", xlabel: str = "", by: str = "label"
) -> Axes:
    """One histogram of ``column`` per ``by`` group (labels) on ``ax``, overlaid, sharing bins.

    Integer figures get one bin per value while that is at most 60 bins, so small counts are not
    smeared across bins.
    """
    bins, _ = histogram(data[column])
    for name, group in data.groupby(by, sort=False):
        ax.hist(group[column], bins=bins, alpha=0.5, label=f"{name} (mean {group[column].mean():.1f})")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # caption counts: no 2.5 captions
    ax.set_xlabel(xlabel or column)
    ax.set_ylabel("captions")
    ax.set_title(title)
    ax.legend()
    return ax


def plot_caption_lengths(ax: Axes, data: Run | pd.DataFrame, *, unit: str = "words") -> Axes:
    """Histogram of caption length (``unit``: words, tokens or chars) per label."""
    df = caption_lengths(data) if isinstance(data, Run) else data
    return plot_histograms(ax, df, unit, title="Caption length", xlabel=f"{unit} per caption")


def plot_nouns_per_caption(ax: Axes, data: Run | pd.DataFrame, *, distinct: bool = False) -> Axes:
    """Histogram of nouns per caption (``distinct``: distinct nouns) per label."""
    df = nouns_per_caption(data) if isinstance(data, Run) else data
    col = "distinct_nouns" if distinct else "nouns"
    return plot_histograms(
        ax, df, col, title="Nouns per caption", xlabel=col.replace("_", " ") + " per caption"
    )


def plot_rank_frequency(ax: Axes, data: Run | pd.DataFrame) -> Axes:
    """Noun frequency against rank on log-log axes, one line per label (Zipf plot)."""
    df = rank_frequency(data) if isinstance(data, Run) else data
    for label, group in df.groupby("label", sort=False):
        ax.plot(
            group["rank"],
            group["frequency"],
            marker=".",
            markersize=3,
            label=f"{label} ({len(group):,} nouns)",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("occurrences")
    ax.set_title("Noun rank / frequency")
    ax.legend()
    return ax


def plot_gained_lost(ax: Axes, data: pd.DataFrame, change: str = "gained", *, top: int = 20) -> Axes:
    """Horizontal bars of the most frequent ``gained`` (or ``lost``) nouns of
    :func:`nouns_gained_lost`, the most frequent at the top."""
    part = data[data["change"] == change].sort_values("rank").head(top)
    ax.barh(part["noun"][::-1], part["count"][::-1])
    where = data.attrs.get("after" if change == "gained" else "before", "")
    other = data.attrs.get("before" if change == "gained" else "after", "")
    ax.set_title(f"Nouns {change}: in {where}, never in {other}" if where else f"Nouns {change}")
    ax.set_xlabel(f"occurrences in {where}" if where else "occurrences")
    return ax
