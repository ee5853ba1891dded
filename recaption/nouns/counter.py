"""The noun counter: captions in, the nouns of each caption out.

:class:`NounCounter` is cheap, picklable configuration until :meth:`NounCounter.load` builds the
spaCy pipeline (once per worker). It takes plain Python strings (or bytes, or ``None``) and
returns one :class:`CaptionNouns` per caption, streaming through ``nlp.pipe`` so memory stays
bounded however many captions there are.

Speed (see ``benchmarks/nouns_cpu.py``): only tok2vec and the tagger run over every token. The
attribute ruler and lemmatizer, which the stock pipeline runs over every token too, are applied
to noun candidates only, through :class:`~recaption.nouns.model.NounRules`, with the decision for
each (word, tag) pair cached. The result equals the stock pipeline's.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from recaption.nouns.options import NounOptions

if TYPE_CHECKING:
    from recaption.nouns.stats import NounStats

REPLACEMENT_CHAR = "\ufffd"
#: Captions per spaCy memory zone (see :meth:`NounCounter.iter_count`).
ZONE_CAPTIONS = 8192
#: Captions read from the input at a time.
BLOCK_CAPTIONS = 1024
#: Entries kept in each per-word cache before it is emptied (bounds a worker's memory).
MAX_CACHE = 1_000_000
_LAST_SPACE = re.compile(r"\s(?=\S*\Z)")
_SURROGATE = re.compile("[\ud800-\udfff]")

# Per-caption columns, for writing the nouns beside each caption in a shard.
NOUN_COLUMNS = (
    "nouns",
    "n_nouns",
    "n_words",
    "n_tokens",
    "n_chars",
    "empty",
    "truncated",
    "replaced",
    "non_latin",
)


@dataclass
class CaptionNouns:
    """The nouns of one caption, in order of appearance (repeats kept), and what was odd about it.

    Attributes:
        nouns: normalised nouns (per the options), in order, repeats kept.
        n_words: whitespace-separated words of the text analysed.
        n_tokens: spaCy tokens of the text analysed, whitespace tokens excluded.
        n_chars: characters of the caption as given (before truncation).
        empty: the caption was missing, empty or whitespace only.
        truncated: the caption was longer than ``max_chars`` and was cut.
        replaced: the text holds U+FFFD replacement characters (bytes that were not UTF-8).
        non_latin: most of its letters are outside the Latin script (an English tagger's nouns
            mean little there); still counted.
    """

    nouns: list[str]
    n_words: int
    n_tokens: int
    n_chars: int
    empty: bool = False
    truncated: bool = False
    replaced: bool = False
    non_latin: bool = False

    @property
    def n_nouns(self) -> int:
        return len(self.nouns)

    def to_row(self, prefix: str = "") -> dict[str, Any]:
        """The caption's columns (:data:`NOUN_COLUMNS`), each name prefixed with ``prefix``."""
        row = asdict(self)
        row["n_nouns"] = len(self.nouns)
        return {f"{prefix}{k}": row[k] for k in NOUN_COLUMNS}


def noun_fields(prefix: str = "") -> list[Any]:
    """``pyarrow`` fields of :meth:`CaptionNouns.to_row` (for a shard schema)."""
    import pyarrow as pa

    types = {
        "nouns": pa.list_(pa.string()),
        "n_nouns": pa.int32(),
        "n_words": pa.int32(),
        "n_tokens": pa.int32(),
        "n_chars": pa.int32(),
        "empty": pa.bool_(),
        "truncated": pa.bool_(),
        "replaced": pa.bool_(),
        "non_latin": pa.bool_(),
    }
    return [pa.field(f"{prefix}{name}", types[name]) for name in NOUN_COLUMNS]


@dataclass
class PreparedText:
    """A caption made safe for spaCy, with the flags of what was done to it."""

    text: str
    n_chars: int
    empty: bool
    truncated: bool
    replaced: bool
    non_latin: bool


def prepare_text(raw: str | bytes | None, max_chars: int) -> PreparedText:
    """Decode, sanitise and cut one caption.

    - ``bytes`` are decoded as UTF-8 with replacement; ``None`` and NaN are empty captions.
    - Lone surrogates (from ``surrogateescape`` decoding) are replaced, as undecodable bytes are.
    - Text over ``max_chars`` characters is cut at the last whitespace before the limit (so no
      word is split), or at the limit when the last half holds no whitespace.
    """
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        text = ""
    elif isinstance(raw, bytes | bytearray | memoryview):
        text = bytes(raw).decode("utf-8", errors="replace")
    elif isinstance(raw, str):
        text = raw
    else:
        text = str(raw)
    non_latin = False
    if not text.isascii():
        # Lone surrogates (``surrogateescape`` decoding of bad bytes) stand for undecodable bytes.
        text = _SURROGATE.sub(REPLACEMENT_CHAR, text)
        letters = [c for c in text if c.isalpha()]
        if letters:
            foreign = sum(1 for c in letters if ord(c) > 0x24F)  # beyond Latin Extended-B
            non_latin = foreign * 2 > len(letters)
    n_chars = len(text)
    truncated = False
    if n_chars > max_chars:
        head = text[:max_chars]
        m = _LAST_SPACE.search(head)
        cut = m.start() if m and m.start() >= max_chars // 2 else max_chars
        text = head[:cut]
        truncated = True
    return PreparedText(
        text=text,
        n_chars=n_chars,
        empty=not text.strip(),
        truncated=truncated,
        replaced=REPLACEMENT_CHAR in text,
        non_latin=non_latin,
    )


class NounCounter:
    """Finds the nouns of captions with spaCy, per :class:`NounOptions`.

    Picklable before and after :meth:`load` (the pipeline is not pickled; a worker loads its own
    on first use). Typical use on a worker::

        counter = NounCounter(options).load()
        for result in counter.iter_count(texts):   # streams; bounded memory
            ...
        stats = counter.count_stats(texts)          # or straight into mergeable statistics
    """

    def __init__(self, options: NounOptions | None = None) -> None:
        self.options = options or NounOptions()
        self._reset()

    def _reset(self) -> None:
        self._nlp: Any = None
        self.model_name: str | None = None
        self._rules: Any = None
        self._lemmatizer: Any = None
        self._stock: list[Any] = []
        self._stop: frozenset[str] = frozenset()
        self._noun_tag_ids: Any = None
        self._decisions: dict[tuple[int, int], tuple[str, str] | None] = {}
        self._special: dict[int, bool] = {}
        self._seen = 0  # captions processed (memory-zone epochs, see iter_count)
        self._epoch = 0
        self._zone: contextlib.ExitStack | None = None
        self._fp: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.options = state["options"]
        self._reset()

    # -- loading ----------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._nlp is not None

    @property
    def fast_path(self) -> bool:
        """Whether the attribute-ruler fast path is in use (after :meth:`load`)."""
        return self._rules is not None

    def load(self) -> NounCounter:
        """Build the spaCy pipeline (idempotent); raises ``ConfigError`` for a missing model."""
        if self._nlp is not None:
            return self
        import numpy as np

        from recaption.nouns.model import compile_rules, load_pipeline

        opts = self.options
        self._stop = opts.stop_words()
        nlp, self.model_name = load_pipeline(opts)
        rules = compile_rules(nlp, opts)
        post = [n for n in ("attribute_ruler", "lemmatizer") if n in nlp.pipe_names]
        if rules is not None:
            # Loaded for their tables; applied to noun candidates only (and to the rare documents
            # where a word-specific rule might apply, see NounRules).
            for name in post:
                nlp.disable_pipe(name)
            self._stock = [nlp.get_pipe(n) for n in post]
            strings = nlp.vocab.strings
            self._noun_tag_ids = np.array(sorted(strings.add(t) for t in rules.noun_tags), dtype=np.uint64)
        if opts.lemmatize:
            self._lemmatizer = nlp.get_pipe("lemmatizer")
        self._rules = rules
        self._nlp = nlp
        return self

    @property
    def nlp(self) -> Any:
        """The loaded spaCy ``Language`` (loads it on first use)."""
        return self.load()._nlp

    # -- counting ---------------------------------------------------------------------------------
    def iter_count(self, texts: Iterable[str | bytes | None]) -> Iterator[CaptionNouns]:
        """One :class:`CaptionNouns` per text, in order; streams through ``nlp.pipe``.

        Memory stays bounded: spaCy's vocabulary otherwise grows with every new word it sees
        (URLs, ids, typos). The captions a counter processes, across calls, are grouped into
        epochs of :data:`ZONE_CAPTIONS`. The first epoch runs outside a memory zone, so its
        words stay in the vocabulary and the tokenizer's cache (common words are then never
        re-created); each later epoch runs inside one spaCy memory zone, freed when it ends.
        """
        max_chars = self.options.max_chars
        it = iter(texts)
        while True:
            block = [prepare_text(t, max_chars) for t in islice(it, BLOCK_CAPTIONS)]
            if not block:
                return
            yield from self._process_block(block)

    def _process_block(self, block: list[PreparedText]) -> list[CaptionNouns]:
        nlp = self.nlp
        epoch = self._seen // ZONE_CAPTIONS
        if epoch != self._epoch:
            self.close_zone()
            self._trim_caches()
            self._epoch = epoch
            if epoch > 0:
                self._zone = contextlib.ExitStack()
                self._zone.enter_context(nlp.memory_zone())
        pairs = ((p.text, p) for p in block)
        results = [
            self._result(doc, prep)
            for doc, prep in nlp.pipe(pairs, as_tuples=True, batch_size=self.options.batch_size)
        ]
        self._seen += len(block)
        return results

    def close_zone(self) -> None:
        """End the open memory zone, if any (freeing its strings); counting may go on after."""
        if self._zone is not None:
            zone, self._zone = self._zone, None
            zone.close()

    def _trim_caches(self) -> None:
        # Decisions are keyed by string hashes, valid across zones; only their number is bounded.
        for cache in (self._decisions, self._special):
            if len(cache) > MAX_CACHE:
                cache.clear()
        lemma_cache = getattr(self._lemmatizer, "cache", None)
        if isinstance(lemma_cache, dict) and len(lemma_cache) > MAX_CACHE:
            lemma_cache.clear()

    def count(self, texts: Iterable[str | bytes | None]) -> list[CaptionNouns]:
        """:meth:`iter_count` as a list."""
        return list(self.iter_count(texts))

    def nouns_per_caption(self, texts: Iterable[str | bytes | None]) -> list[list[str]]:
        """Only the nouns of each caption."""
        return [r.nouns for r in self.iter_count(texts)]

    def count_stats(self, texts: Iterable[str | bytes | None]) -> NounStats:
        """Stream ``texts`` straight into mergeable :class:`~recaption.nouns.stats.NounStats`."""
        from recaption.nouns.stats import NounStats

        stats = NounStats.for_options(self.fingerprint())
        for result in self.iter_count(texts):
            stats.add(result)
        return stats

    def fingerprint(self) -> dict[str, Any]:
        """The options' :meth:`~recaption.nouns.options.NounOptions.fingerprint`, computed once."""
        if self._fp is None:
            self._fp = self.options.fingerprint()
        return self._fp

    # -- per document -----------------------------------------------------------------------------
    def _result(self, doc: Any, prep: PreparedText) -> CaptionNouns:
        if prep.empty:
            nouns: list[str] = []
            n_tokens = 0
        else:
            nouns, n_tokens = self._nouns(doc)
        return CaptionNouns(
            nouns=nouns,
            n_words=len(prep.text.split()),
            n_tokens=n_tokens,
            n_chars=prep.n_chars,
            empty=prep.empty,
            truncated=prep.truncated,
            replaced=prep.replaced,
            non_latin=prep.non_latin,
        )

    def _nouns(self, doc: Any) -> tuple[list[str], int]:
        import numpy as np
        from spacy.attrs import IS_SPACE, LOWER, ORTH, TAG

        if self._rules is None:
            return self._nouns_stock(doc)
        if not len(doc):
            return [], 0
        arr = doc.to_array([ORTH, LOWER, TAG, IS_SPACE])
        n_tokens = len(doc) - int(arr[:, 3].sum())
        idx = np.flatnonzero(np.isin(arr[:, 2], self._noun_tag_ids) & (arr[:, 3] == 0))
        if not len(idx):
            return [], n_tokens
        rows = arr[idx, :3].tolist()
        special = self._special
        strings = doc.vocab.strings
        for _orth, lower, _tag in rows:
            hit = special.get(lower)
            if hit is None:
                hit = special[lower] = self._rules.is_special(strings[lower])
            if hit:
                # A word-specific rule might apply: run the real components on this document.
                for component in self._stock:
                    doc = component(doc)
                return self._nouns_stock(doc)[0], n_tokens
        decisions = self._decisions
        kept: list[tuple[int, str, str]] = []
        for i, (orth, _lower, tag) in zip(idx.tolist(), rows, strict=True):
            key = (orth, tag)
            try:
                decision = decisions[key]
            except KeyError:
                decision = decisions[key] = self._decide_fast(doc[i])
            if decision is not None:
                kept.append((i, decision[0], decision[1]))
        return self._assemble(doc, kept), n_tokens

    def _decide_fast(self, token: Any) -> tuple[str, str] | None:
        """The (form, surface) of a candidate token from the ruler's table, or None if not kept."""
        attrs = self._rules.attrs(token.tag_, token.lower_)
        pos = attrs.get("POS")
        if pos not in self.options.pos_tags:
            return None
        lemma = None
        if self.options.lemmatize:
            lemmatizer = self._lemmatizer
            if "LEMMA" in attrs and not lemmatizer.overwrite:
                lemma = attrs["LEMMA"]
            else:
                # Set exactly what the ruler would, then ask the model's own lemmatizer.
                token.pos_ = pos
                if "MORPH" in attrs:
                    token.set_morph(attrs["MORPH"])
                lemma = lemmatizer.lemmatize(token)[0]
        return self._normalise(token.text, lemma)

    def _normalise(self, text: str, lemma: str | None) -> tuple[str, str] | None:
        opts = self.options
        form = lemma if lemma is not None else text
        surface = text
        if opts.lowercase:
            form = form.lower()
            surface = surface.lower()
        if len(form) < opts.min_length:
            return None
        if opts.alpha_only and not form.isalpha():
            return None
        stop = self._stop
        if stop and (form.lower() in stop or text.lower() in stop):
            return None
        return form, surface

    def nouns_from_doc(self, doc: Any) -> list[str]:
        """The nouns of a ``Doc`` that any spaCy pipeline with POS (and lemmas, if lemmatizing)
        has processed, normalised and filtered per the options.

        The reference path: it reads ``token.pos_`` and ``token.lemma_`` as the stock components
        set them. The benchmark uses it on the full pipeline's output to check the fast path.
        The counter must be loaded (for the stop list).
        """
        self.load()
        return self._nouns_stock(doc)[0]

    def _nouns_stock(self, doc: Any) -> tuple[list[str], int]:
        """Nouns from the POS and lemmas the pipeline's own components set (slow, reference path)."""
        pos_tags = self.options.pos_tags
        lemmatize = self.options.lemmatize
        kept: list[tuple[int, str, str]] = []
        n_tokens = 0
        for token in doc:
            if token.is_space:
                continue
            n_tokens += 1
            if token.pos_ not in pos_tags:
                continue
            decision = self._normalise(token.text, token.lemma_ if lemmatize else None)
            if decision is not None:
                kept.append((token.i, decision[0], decision[1]))
        return self._assemble(doc, kept), n_tokens

    def _assemble(self, doc: Any, kept: list[tuple[int, str, str]]) -> list[str]:
        """Turn kept noun tokens ``(index, form, surface)`` into nouns, joining compounds if asked."""
        mode = self.options.compounds
        if mode == "off" or len(kept) < 2:
            return [form for _, form, _ in kept]
        if mode == "join":
            # Adjacent kept nouns form one compound: modifiers as written, the head normalised.
            nouns: list[str] = []
            run: list[tuple[int, str, str]] = []
            for item in kept:
                if run and item[0] != run[-1][0] + 1:
                    nouns.append(_join(run))
                    run = []
                run.append(item)
            nouns.append(_join(run))
            return nouns
        # mode == "parser": a kept noun that is a ``compound`` of a kept noun is its modifier.
        by_index = {i: (form, surface) for i, form, surface in kept}
        nouns = []
        for i, _form, _surface in kept:
            token = doc[i]
            if token.dep_ == "compound" and token.head.i in by_index and token.head.i != i:
                continue
            members = sorted(_compound_members(token, by_index))
            nouns.append(_join([(j, *by_index[j]) for j in members]))
        return nouns


def _join(run: list[tuple[int, str, str]]) -> str:
    return " ".join([surface for _, _, surface in run[:-1]] + [run[-1][1]])


def _compound_members(token: Any, kept: dict[int, tuple[str, str]]) -> set[int]:
    members = {token.i}
    for child in token.children:
        if child.dep_ == "compound" and child.i in kept:
            members |= _compound_members(child, kept)
    return members
