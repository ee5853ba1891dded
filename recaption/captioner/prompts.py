"""Captioning prompts: PixArt's two presets and user templates with a ``{raw_caption}`` field.

PixArt-α captioned SAM with "Describe this image and its style in a very detailed manner" and
LAION with the alt-text given as a hint inside single quotes (paper, figure 10). A template is
checked when it is built: the only field allowed is ``{raw_caption}`` (literal braces are written
``{{`` and ``}}``), so a typo fails at start-up rather than on the millionth sample.

Rendering a template for one sample returns the exact prompt text *and* whether it fell back:
a template that needs a raw caption, given an empty one, uses the SAM prompt instead, and says so
(the caption shard records it).
"""

from __future__ import annotations

import string
import unicodedata
from dataclasses import dataclass

from recaption.errors import ConfigError

SAM_PROMPT = "Describe this image and its style in a very detailed manner"
LAION_PROMPT = (
    "Give the caption of this image '{raw_caption}', "
    "describe this image and its style in a very detailed manner"
)

PRESETS: dict[str, str] = {"sam": SAM_PROMPT, "laion": LAION_PROMPT}
ALIASES: dict[str, str] = {"pixart-sam": "sam", "pixart-laion": "laion"}
RAW_CAPTION_FIELD = "raw_caption"
ALLOWED_FIELDS: tuple[str, ...] = (RAW_CAPTION_FIELD,)

# LAION alt-texts run from a few words to kilobytes of keyword spam. PixArt's hints were short
# captions; 300 characters keeps every real caption whole (the median LAION alt-text is ~50) and
# stops spam from crowding out the instruction.
DEFAULT_MAX_HINT_CHARS = 300

_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»"}


@dataclass(frozen=True)
class RenderedPrompt:
    """The exact instruction text sent for one sample, and whether the fallback prompt was used."""

    text: str
    fallback: bool = False
    reason: str = ""


def _fields(template: str, option: str) -> list[tuple[str, str, str | None]]:
    """The ``(field, format_spec, conversion)`` triples of a ``str.format`` template, or ConfigError."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(
            option,
            template,
            f"a template whose only field is {{{RAW_CAPTION_FIELD}}}",
            hint=f"it is not a valid template ({e}); write a literal brace as '{{{{' or '}}}}'",
        ) from None
    return [(name, spec or "", conv) for _, name, spec, conv in parsed if name is not None]


def _check_template(template: str, option: str, allowed: tuple[str, ...]) -> bool:
    """Validate the fields of ``template``; return whether it uses ``{raw_caption}``."""
    accepted = ", ".join("{" + f + "}" for f in allowed) if allowed else "no fields"
    uses_raw = False
    for name, spec, conv in _fields(template, option):
        if name not in allowed:
            shown = "{}" if name == "" else "{" + name + "}"
            raise ConfigError(
                option,
                template,
                f"fields allowed: {accepted}",
                hint=f"unknown field {shown}; write a literal brace as '{{{{' or '}}}}'",
            )
        if spec or conv:
            raise ConfigError(
                option,
                template,
                f"fields allowed: {accepted}",
                hint="fields take no format spec or conversion (write {raw_caption}, not {raw_caption!r} or "
                "{raw_caption:>10})",
            )
        uses_raw = True
    return uses_raw


def _quote_around_field(template: str) -> str:
    """The quote character written just before ``{raw_caption}`` in the template, if any."""
    before = template.split("{" + RAW_CAPTION_FIELD + "}", 1)[0]
    return before[-1] if before and before[-1] in _QUOTE_PAIRS else ""


def clean_hint(raw_caption: str | None, max_chars: int = DEFAULT_MAX_HINT_CHARS, quote: str = "'") -> str:
    """Make a raw caption safe to quote inside a prompt.

    - control characters dropped, every run of whitespace (newlines, tabs) made one space;
    - one pair of quotes wrapping the whole caption removed;
    - the template's own quote character inside the caption replaced (``'`` → ``’``, ``"`` → ``'``),
      so the quoted hint cannot end early ("Kid's toy" stays one quoted phrase);
    - cut to ``max_chars`` at a word boundary, with an ellipsis.
    """
    if raw_caption is None:
        return ""
    text = "".join(
        " " if ch.isspace() else ch
        for ch in str(raw_caption)
        if ch.isspace() or unicodedata.category(ch) != "Cc"
    )
    text = " ".join(text.split())
    if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    if quote == "'":
        text = text.replace("'", "’")
    elif quote == '"':
        text = text.replace('"', "'")
    if max_chars > 0 and len(text) > max_chars:
        cut = text[:max_chars]
        space = cut.rfind(" ")
        if space >= max_chars * 0.7:  # keep whole words unless that loses too much
            cut = cut[:space]
        text = cut.rstrip(" ,;:.-") + "…"
    return text


@dataclass(frozen=True)
class PromptTemplate:
    """An instruction template, validated at construction.

    ``template`` may contain ``{raw_caption}`` (the sample's original caption, cleaned by
    :func:`clean_hint`); ``fallback`` (no fields) is used when that caption is empty.
    """

    template: str
    name: str = "custom"
    fallback: str = SAM_PROMPT
    max_hint_chars: int = DEFAULT_MAX_HINT_CHARS

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or not self.template.strip():
            raise ConfigError("prompt", self.template, self.accepted_text())
        _check_template(self.template, "prompt", ALLOWED_FIELDS)
        if not self.fallback.strip():
            raise ConfigError("fallback_prompt", self.fallback, "a non-empty prompt without fields")
        _check_template(self.fallback, "fallback_prompt", ())
        if self.max_hint_chars < 0:
            raise ConfigError("max_hint_chars", self.max_hint_chars, "an integer >= 0 (0: no cap)")

    @staticmethod
    def accepted_text() -> str:
        names = ", ".join(repr(n) for n in [*PRESETS, *ALIASES])
        return f"a preset ({names}) or a template text whose only field is {{{RAW_CAPTION_FIELD}}}"

    @property
    def uses_raw_caption(self) -> bool:
        """Whether the template puts the sample's raw caption in the prompt."""
        return any(name == RAW_CAPTION_FIELD for name, _, _ in _fields(self.template, "prompt"))

    def render(self, raw_caption: str | None = None) -> RenderedPrompt:
        """The prompt for one sample. Never raises for any caption value."""
        if not self.uses_raw_caption:
            return RenderedPrompt(self.template.format())
        hint = clean_hint(raw_caption, self.max_hint_chars, _quote_around_field(self.template))
        if not hint:
            what = "no raw caption" if raw_caption is None else "an empty raw caption"
            return RenderedPrompt(
                self.fallback.format(),
                fallback=True,
                reason=f"{what} under the {self.name!r} prompt: used the fallback prompt",
            )
        return RenderedPrompt(self.template.format(raw_caption=hint))


def resolve_prompt(
    spec: str | PromptTemplate,
    *,
    fallback: str = SAM_PROMPT,
    max_hint_chars: int = DEFAULT_MAX_HINT_CHARS,
) -> PromptTemplate:
    """A preset name (``sam``, ``laion``, ``pixart-sam``, ``pixart-laion``) or a template text.

    A single word that is no preset is refused (a typo such as ``lion`` must not become the
    prompt); a template must have spaces or a ``{raw_caption}`` field.
    """
    if isinstance(spec, PromptTemplate):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("prompt", spec, PromptTemplate.accepted_text())
    key = spec.strip().lower()
    key = ALIASES.get(key, key)
    if key in PRESETS:
        return PromptTemplate(PRESETS[key], name=key, fallback=fallback, max_hint_chars=max_hint_chars)
    if "{" not in spec and " " not in spec.strip():
        raise ConfigError(
            "prompt", spec, [*PRESETS, *ALIASES], hint="not a preset name, and too short to be a prompt"
        )
    return PromptTemplate(spec, name="custom", fallback=fallback, max_hint_chars=max_hint_chars)
