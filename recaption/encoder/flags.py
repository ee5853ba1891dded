"""``--drop-flagged``: which caption flags keep a sample out of the training features.

A caption shard row carries, per generated caption column, ``finish_reason`` (``length``: cut at
the token limit), ``repetition`` (a loop), ``prompt_fallback`` (the raw-caption prompt had no raw
caption) and ``error``. :func:`drop_reasons` names the flags a row has among those asked for; the
encode stage drops such a row with a manifest row naming them and a ``dropped_<flag>`` counter.
"""

from __future__ import annotations

from typing import Any

from recaption.errors import ConfigError

DROP_FLAGS = ("length", "repetition", "fallback", "error")
_WHAT = {
    "length": "hit the token limit (finish_reason=length)",
    "repetition": "flagged a repetition loop",
    "fallback": "generated with the fallback prompt (no raw caption)",
    "error": "captioning failed",
}


def check_drop_flags(flags: tuple[str, ...] | list[str], option: str = "--drop-flagged") -> tuple[str, ...]:
    """Validate the flag names; returns them as a tuple in the order given."""
    out = tuple(flags)
    for f in out:
        if f not in DROP_FLAGS:
            raise ConfigError(option, f, DROP_FLAGS)
    return out


def meta_column(caption_column: str, name: str) -> str:
    """A caption column's metadata column (``finish_reason``, or ``short_caption_finish_reason``)."""
    return name if caption_column == "dense_caption" else f"{caption_column}_{name}"


def flag_columns(caption_columns: list[str]) -> list[str]:
    """The metadata columns :func:`drop_reasons` reads for these caption columns."""
    names = ("finish_reason", "repetition", "prompt_fallback", "error")
    return [meta_column(c, n) for c in caption_columns for n in names]


def drop_reasons(row: dict[str, Any], caption_columns: list[str], flags: tuple[str, ...]) -> list[str]:
    """``["length", ...]``: the asked-for flags this row has on any of ``caption_columns``, and a
    sentence per flag for the manifest (``dense_caption hit the token limit ...``)."""
    found: dict[str, list[str]] = {}
    for c in caption_columns:
        checks = {
            "length": row.get(meta_column(c, "finish_reason")) == "length",
            "repetition": bool(row.get(meta_column(c, "repetition"))),
            "fallback": bool(row.get(meta_column(c, "prompt_fallback"))),
            "error": bool(row.get(meta_column(c, "error")))
            or row.get(meta_column(c, "finish_reason")) == "error",
        }
        for f in flags:
            if checks[f]:
                found.setdefault(f, []).append(c)
    return list(found)


def describe(row: dict[str, Any], caption_columns: list[str], reasons: list[str]) -> str:
    """The manifest reason of a dropped row."""
    parts = []
    for f in reasons:
        cols = [c for c in caption_columns if f in drop_reasons(row, [c], (f,))]
        parts.append(f"{', '.join(cols)} {_WHAT[f]}")
    return "dropped by --drop-flagged " + ",".join(reasons) + ": " + "; ".join(parts)
