"""Which captions a caption stage writes: one column per prompt (``--prompt COLUMN=PRESET_OR_TEMPLATE``).

``dense_caption`` is the default column and keeps the plain metadata names (``prompt``,
``finish_reason``, ``repetition``, ...); any other column ``C`` gets ``C_prompt``,
``C_finish_reason``, ... beside it. :func:`parse_caption_specs` validates the specs at start-up:
a column name that is not an identifier, repeated, or taken by another column fails naming
``prompt`` and what is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from recaption.captioner.prompts import PromptTemplate, resolve_prompt
from recaption.errors import ConfigError

DEFAULT_COLUMN = "dense_caption"
AUTO = "auto"
# Per-caption metadata, in schema order (name, pyarrow type name).
META_FIELDS: tuple[tuple[str, str], ...] = (
    ("prompt", "string"),  # the exact instruction text given to the model
    ("prompt_name", "string"),  # sam | laion | custom
    ("prompt_fallback", "bool"),  # the raw caption was empty: fallback prompt used
    ("num_tokens", "int32"),  # generated tokens, end-of-sequence included
    ("finish_reason", "string"),  # stop | length | error
    ("repetition", "bool"),  # degenerate repetition detected
    ("repetition_score", "float32"),
    ("error", "string"),  # why this caption is missing
    ("attempts", "int32"),  # generations it took (1, or more with --retry-flagged)
    ("retry_reason", "string"),  # why it was regenerated: length, repetition, length+repetition
)
_COLUMN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)


@dataclass(frozen=True)
class CaptionSpec:
    """One caption column and the prompt that writes it."""

    column: str
    template: PromptTemplate
    spec: str  # as given (``auto``, a preset or a template)

    def meta(self, name: str) -> str:
        """The column of one metadata field of this caption (``finish_reason`` or ``short_finish_reason``)."""
        return name if self.column == DEFAULT_COLUMN else f"{self.column}_{name}"

    def seed_key(self, key: str) -> str:
        """The sampling stream of this caption of sample ``key`` (the key itself for ``dense_caption``,
        so a run with one prompt samples what it always did)."""
        return key if self.column == DEFAULT_COLUMN else f"{key}/{self.column}"


def split_spec(item: str) -> tuple[str, str]:
    """``COLUMN=PRESET_OR_TEMPLATE`` → ``(column, value)``; a bare value is ``dense_caption``'s."""
    m = _COLUMN.match(item.strip())
    if m and m.group(2).strip():
        return m.group(1), m.group(2).strip()
    return DEFAULT_COLUMN, item


def parse_caption_specs(
    prompt: str | list[str] | tuple[str, ...], auto_prompt: str | None = None
) -> list[CaptionSpec]:
    """The caption columns of ``prompt`` (one spec or several); ``auto`` resolves to ``auto_prompt``."""
    from recaption.columns import sample_fields

    items = [prompt] if isinstance(prompt, str) else list(prompt)
    items = items or [AUTO]
    reserved = {f.name for f in sample_fields()} | {"model_id", "model_revision"}
    specs: list[CaptionSpec] = []
    taken: set[str] = set(reserved)
    for item in items:
        if not isinstance(item, str):
            raise ConfigError("prompt", item, "COLUMN=PRESET_OR_TEMPLATE, or PRESET_OR_TEMPLATE")
        column, value = split_spec(item)
        if value.strip().lower() == AUTO:
            if auto_prompt is None:
                raise ConfigError("prompt", item, "a preset or template (auto is resolved by the stage)")
            value_template = resolve_prompt(auto_prompt)
        else:
            value_template = resolve_prompt(value)
        spec = CaptionSpec(column, value_template, value)
        names = {column, *(spec.meta(n) for n, _ in META_FIELDS)}
        clash = sorted(names & taken)
        if clash:
            raise ConfigError(
                "prompt",
                item,
                "one prompt per caption column, a column name not used by another column",
                hint=f"{column} already taken" if column in taken else f"{', '.join(clash)} already taken",
            )
        taken |= names
        specs.append(spec)
    return specs


def schema_fields(specs: list[CaptionSpec]) -> list[Any]:
    """The pyarrow fields of the caption columns and their metadata."""
    import pyarrow as pa

    types = {"string": pa.string(), "bool": pa.bool_(), "int32": pa.int32(), "float32": pa.float32()}
    fields = []
    for spec in specs:
        fields.append(pa.field(spec.column, pa.string()))
        fields += [pa.field(spec.meta(n), types[t]) for n, t in META_FIELDS]
    return fields
