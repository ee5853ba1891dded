"""What a stage's per-shard counters say about caption quality, for summaries people read.

A run can have no error and no warning and still be useless: every caption cut at
``max_new_tokens``, or looping. The caption and encode stages count these per shard (the
``counters`` of each ``_stats/part-*.json``); this turns the summed counters into the figures
``summary.json`` and the console summary show. Light on purpose (no pandas): the CLI imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def stage_quality(stage: str, counters: Mapping[str, int]) -> dict[str, Any] | None:
    """The quality figures of one stage's summed counters, or ``None`` for a stage without any.

    ``caption``: ``finish_reasons`` (``stop``: the model ended the caption; ``length``: cut at
    ``max_new_tokens``; ``error``: a caption row without a caption: the rows' own finish reasons, as the
    shards and the report count them; a file the reader dropped before captioning, a duplicate
    name say, has no row and stays in the stage's ``errors`` alone), ``repetition`` (degenerate loops
    flagged), ``prompt_fallback`` (an empty raw caption made the prompt fall back), ``tokens``
    generated, ``retried``/``retry_fixed``/``retry_still_flagged`` (``--retry-flagged``); these
    figures are ``dense_caption``'s (or, where a run has none, those of the caption ``column`` it
    names), and ``columns`` holds the same per other caption column
    (``--prompt COLUMN=...``; its ``error`` counts that column's failed captions).
    ``encode``: per caption field, ``t5_truncated`` and ``t5_empty``, of ``encoded``.
    """
    c = {k: int(v) for k, v in counters.items()}
    if stage == "caption":
        # another caption column C (``--prompt C=...``) counts under ``C.<name>``: its own figures,
        # so a short caption cut at the token limit is not hidden behind the dense caption's
        extra = sorted({k.split(".", 1)[0] for k in c if "." in k})
        has_dense = not extra or any(k in c for k in ("captioned", "failed", "generated_tokens"))
        if has_dense:
            out = _caption_quality(c, "")
        else:  # no dense_caption column (one --prompt COLUMN=...): the first column's figures
            first, extra = extra[0], extra[1:]
            out = {**_caption_quality(c, f"{first}."), "column": first}
        if extra:
            out["columns"] = {col: _caption_quality(c, f"{col}.") for col in extra}
        return out
    if stage == "encode" and any(k.startswith(("truncated_", "empty_")) or k == "encoded" for k in c):
        fields = sorted({k.split("_", 1)[1] for k in c if k.startswith(("truncated_", "empty_"))})
        return {
            "encoded": c.get("encoded", 0),
            "t5_truncated": {f: c.get(f"truncated_{f}", 0) for f in fields},
            "t5_empty": {f: c.get(f"empty_{f}", 0) for f in fields},
            "dropped_aspect": c.get("dropped_aspect", 0),
        }
    return None


def _caption_quality(c: Mapping[str, int], prefix: str) -> dict[str, Any]:
    captioned = c.get(f"{prefix}captioned", 0)
    length = c.get(f"{prefix}length_limited", 0)
    failed = c.get(f"{prefix}failed", 0)  # rows whose caption failed (not files never read)
    return {
        "finish_reasons": {"stop": max(0, captioned - length), "length": length, "error": failed},
        "repetition": c.get(f"{prefix}repetitive", 0),
        "prompt_fallback": c.get(f"{prefix}prompt_fallback", 0),
        "tokens": c.get(f"{prefix}generated_tokens", 0),
        # --retry-flagged: captions redone, and whether the kept one is clean
        "retried": c.get(f"{prefix}retried", 0),
        "retry_fixed": c.get(f"{prefix}retry_fixed", 0),
        "retry_still_flagged": c.get(f"{prefix}retry_still_flagged", 0),
    }


def quality_lines(stage: str, quality: Mapping[str, Any] | None) -> list[tuple[str, bool]]:
    """Sentences for the console, each with whether it needs attention (shown highlighted)."""
    if not quality:
        return []
    out: list[tuple[str, bool]] = []
    if stage == "caption":
        columns = quality.get("columns") or {}
        first = quality.get("column") or "dense_caption"
        out += _caption_lines(f"{stage} {first}" if columns or quality.get("column") else stage, quality)
        for col, q in columns.items():
            out += _caption_lines(f"{stage} {col}", q)
    elif stage == "encode":
        enc = quality.get("encoded", 0)
        trunc = quality.get("t5_truncated", {})
        parts = [f"{n:,} {f}" for f, n in trunc.items() if n]
        if parts:
            out.append((f"{stage}: T5 truncated {', '.join(parts)} caption(s) of {enc:,} encoded rows", True))
        else:
            out.append((f"{stage}: no caption was truncated by T5 ({enc:,} rows encoded)", False))
    return out


def _caption_lines(stage: str, quality: Mapping[str, Any]) -> list[tuple[str, bool]]:
    out: list[tuple[str, bool]] = []
    fr = quality["finish_reasons"]
    total = sum(fr.values())
    if not total:
        return []
    out.append(
        (
            f"{stage}: {total:,} samples: {fr['stop']:,} captions finished (stop), "
            f"{fr['length']:,} cut at max_new_tokens (length), {fr['error']:,} without a caption (error)",
            total > 0 and (fr["length"] > 0 or fr["error"] > 0),
        )
    )
    if fr["length"] and fr["length"] * 2 >= total:
        out.append(
            (
                f"{stage}: {fr['length'] / total:.0%} of the captions stopped at max_new_tokens: "
                "raise caption.max_new_tokens (--max-new-tokens) unless that is intended",
                True,
            )
        )
    out.append(
        (
            f"{stage}: {quality['repetition']:,} flagged as repetitive, {quality['prompt_fallback']:,} "
            "prompt fallbacks (empty raw caption)",
            quality["repetition"] > 0,
        )
    )
    if quality.get("retried"):
        out.append(
            (
                f"{stage}: {quality['retried']:,} flagged captions retried: {quality['retry_fixed']:,} "
                f"fixed, {quality['retry_still_flagged']:,} still flagged (kept, flagged)",
                quality["retry_still_flagged"] > 0,
            )
        )
    return out
