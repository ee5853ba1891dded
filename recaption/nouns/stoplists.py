"""Built-in stop lists for the noun counter.

A stop list only removes words that the tagger already called nouns, so it mostly catches tagger
slips ("s", "don", "ma") rather than changing what a noun is. Two lists are built in:

- ``default``: NLTK's English stop-word list (the 179 words of ``nltk.corpus.stopwords``), because
  the PixArt paper names NLTK for its noun analysis. It is function words only.
- ``captions``: ``default`` plus words that describe the picture's framing rather than its content
  ("image", "background", "left", ...). Dense VLM captions use them in almost every row, so they
  inflate nouns per image without adding concepts. Off by default: the paper did not remove them.

A user file (``stop_file``) adds words to whichever list is chosen.
"""

from __future__ import annotations

import hashlib


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# nltk.corpus.stopwords.words("english"), 179 words (NLTK 3.x data, Apache-2.0), verbatim.
NLTK_ENGLISH = _words(
    """
    i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
    yourselves he him his himself she she's her hers herself it it's its itself they them their
    theirs themselves what which who whom this that that'll these those am is are was were be been
    being have has had having do does did doing a an the and but if or because as until while of
    at by for with about against between into through during before after above below to from up
    down in out on off over under again further then once here there when where why how all any
    both each few more most other some such no nor not only own same so than too very s t can will
    just don don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn
    didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn
    mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn
    wouldn't
    """
)

# Words about the picture's framing, not its content; they open most dense captions.
CAPTION_FRAMING = _words(
    """
    image picture photo photograph pic shot snapshot view scene frame background foreground left
    right center centre middle top bottom side front back corner edge part portion area section
    detail closeup
    """
)

BUILTIN_LISTS: dict[str, frozenset[str]] = {
    "default": NLTK_ENGLISH,
    "captions": NLTK_ENGLISH | CAPTION_FRAMING,
    "none": frozenset(),
}


def parse_stop_file(text: str) -> frozenset[str]:
    """Words of a stop file: one per line, case-insensitive, ``#`` starts a comment."""
    words = set()
    for line in text.splitlines():
        word = line.split("#", 1)[0].strip().lower()
        if word:
            words.add(word)
    return frozenset(words)


def digest(words: frozenset[str]) -> str:
    """A short, order-independent fingerprint of a word set (stored in reports and stats)."""
    return hashlib.sha256("\n".join(sorted(words)).encode("utf-8")).hexdigest()[:16]
