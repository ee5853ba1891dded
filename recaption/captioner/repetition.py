"""Degenerate repetition in generated captions: loops at the tail and text that says the same thing over.

Two signals, both on a sequence of hashable units (words of a caption, or token ids):

- **tail loop**: the sequence ends in the same block of ``p`` units repeated back to back (the
  typical failure of greedy decoding: "... a red car, a red car, a red car, ..." until the length
  limit). The block is found for every period ``p`` up to ``max_period``;
- **duplicate n-grams**: the fraction of n-grams (default 4) that already occurred earlier in the
  sequence. Human dense descriptions stay well below the threshold (checked on the 400 human-written
  Image-In-Words descriptions in the tests); a caption that repeats whole sentences does not.

:func:`detect_text_repetition` splits a caption into lower-cased words and punctuation marks and
applies both; it is model-independent, so the flag means the same for every captioner.
:func:`detect_caption_repetition` adds the tail-loop signal on the generated token ids, which sees
loops that have no spaces to split on ("ThereThereThere...", a repeated CJK character, "hahaha...",
runs of newlines that the caption's strip() removes).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

_WORD_RE = re.compile(r"\w+|[^\w\s]")

DEFAULT_MAX_PERIOD = 60
DEFAULT_NGRAM = 4
# Flag when at least this fraction of 4-grams are repeats. The 400 human IIW descriptions (median 184
# words) reach at most 0.19; a caption repeating a sentence a few times reaches 0.3-0.5 and more.
DEFAULT_DUPLICATE_THRESHOLD = 0.3
# Duplicate fractions mean little on a handful of words.
MIN_UNITS_FOR_DUPLICATES = 24


@dataclass(frozen=True)
class RepetitionReport:
    """What the detector found. ``score`` is in [0, 1]: 0 is no repetition at all."""

    repetitive: bool
    score: float
    period: int = 0  # length of the repeated block at the tail (0: no tail loop)
    repeats: int = 0  # how many times that block occurs back to back at the tail
    duplicate_fraction: float = 0.0  # fraction of n-grams seen before
    reason: str = ""


def tokenize_words(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks."""
    return _WORD_RE.findall(text.lower())


def tail_loop(units: Sequence[Hashable], max_period: int = DEFAULT_MAX_PERIOD) -> tuple[int, int, int]:
    """The longest run of one repeated block at the end of ``units``.

    Returns ``(period, repeats, covered)``: the block length, how many whole copies end the
    sequence back to back, and how many units the run covers (including a partial copy in front).
    Among periods covering the same run, the shortest is returned. ``(0, 0, 0)`` for an empty input.
    """
    n = len(units)
    best = (0, 0, 0)
    for p in range(1, min(max_period, n // 2) + 1):
        # Walk backwards while each unit equals the one a period later (i.e. the sequence is p-periodic).
        i = n - 1 - p
        while i >= 0 and units[i] == units[i + p]:
            i -= 1
        covered = n - 1 - i  # units in the periodic tail run
        repeats = covered // p
        if repeats >= 2 and covered > best[2]:
            best = (p, repeats, covered)
    return best


def duplicate_fraction(units: Sequence[Hashable], n: int = DEFAULT_NGRAM) -> float:
    """Fraction of the n-grams of ``units`` that already occurred earlier in it."""
    total = len(units) - n + 1
    if total <= 0:
        return 0.0
    seen: set[tuple[Hashable, ...]] = set()
    dups = 0
    for i in range(total):
        gram = tuple(units[i : i + n])
        if gram in seen:
            dups += 1
        else:
            seen.add(gram)
    return dups / total


def detect_repetition(
    units: Sequence[Hashable],
    *,
    max_period: int = DEFAULT_MAX_PERIOD,
    ngram: int = DEFAULT_NGRAM,
    duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
    min_loop_units: int = 12,
    min_loop_repeats: int = 3,
    min_single_repeats: int = 8,
) -> RepetitionReport:
    """Flag a degenerate sequence (words or token ids).

    A tail loop counts when its block is repeated at least ``min_loop_repeats`` times and covers at
    least ``min_loop_units`` units (a single repeated unit needs ``min_single_repeats`` copies:
    "very very" is English, eight in a row is not).
    """
    n = len(units)
    if n == 0:
        return RepetitionReport(False, 0.0)
    period, repeats, covered = tail_loop(units, max_period)
    if period == 1:
        loop = repeats >= min_single_repeats
    else:
        loop = period > 1 and repeats >= min_loop_repeats and covered >= min_loop_units
    dup = duplicate_fraction(units, ngram) if n >= MIN_UNITS_FOR_DUPLICATES else 0.0
    dup_flag = dup >= duplicate_threshold
    loop_share = covered / n if loop else 0.0
    score = max(loop_share, dup)
    reasons = []
    if loop:
        reasons.append(f"ends in a block of {period} repeated {repeats} times ({covered}/{n} units)")
    if dup_flag:
        reasons.append(f"{dup:.0%} of {ngram}-grams are repeats")
    return RepetitionReport(
        repetitive=loop or dup_flag,
        score=round(min(1.0, score), 4),
        period=period if loop else 0,
        repeats=repeats if loop else 0,
        duplicate_fraction=round(dup, 4),
        reason="; ".join(reasons),
    )


def detect_text_repetition(text: str, **kwargs: object) -> RepetitionReport:
    """:func:`detect_repetition` on the words and punctuation of a caption."""
    return detect_repetition(tokenize_words(text), **kwargs)  # type: ignore[arg-type]


def detect_caption_repetition(text: str, token_ids: Sequence[int] = ()) -> RepetitionReport:
    """Words of the caption (both signals) and, when given, its token ids (the tail loop only: the
    duplicate-n-gram threshold is calibrated on words, and subword 4-grams repeat more)."""
    words = detect_text_repetition(text)
    if not token_ids:
        return words
    tokens = detect_repetition(list(token_ids), duplicate_threshold=1.1)
    if not tokens.repetitive or words.repetitive:
        return words
    return RepetitionReport(
        repetitive=True,
        score=max(words.score, tokens.score),
        period=tokens.period,
        repeats=tokens.repeats,
        duplicate_fraction=words.duplicate_fraction,
        reason=f"tokens: {tokens.reason}",
    )


class LoopStopper:
    """A ``transformers`` stopping criterion: a row whose generated ids end in a long loop is done.

    Batch-synchronous generation runs until its longest row ends; one greedy caption stuck in a loop
    keeps the whole batch going to ``max_new_tokens``. This ends such a row early (the others go on),
    checking every ``every`` steps. It is stricter than the repetition flag, so prose is never cut:
    a block repeated ``min_repeats`` times back to back, covering at least ``min_tokens`` tokens (a
    single repeated token: ``min_single`` copies). The row's caption keeps the loop's first copies
    and is flagged as repetitive; its finish reason is ``"repetition"``.
    """

    def __init__(
        self,
        prompt_length: int,
        *,
        every: int = 8,
        min_repeats: int = 6,
        min_tokens: int = 48,
        min_single: int = 24,
        max_period: int = DEFAULT_MAX_PERIOD,
        finished_ids: Sequence[int] = (),
    ) -> None:
        self.prompt_length = prompt_length
        self.finished_ids = set(finished_ids)  # end-of-sequence ids: a row holding one is already done
        self.every, self.min_repeats, self.min_tokens = every, min_repeats, min_tokens
        self.min_single, self.max_period = min_single, max_period
        self.stopped: set[int] = set()  # rows this criterion ended

    def looping(self, ids: Sequence[int]) -> bool:
        """Whether generated ``ids`` end in a loop long enough to stop."""
        window = list(ids[-(self.max_period * self.min_repeats + 1) :])
        period, repeats, covered = tail_loop(window, self.max_period)
        if period == 1:
            return repeats >= self.min_single
        return period > 1 and repeats >= self.min_repeats and covered >= self.min_tokens

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        steps = input_ids.shape[1] - self.prompt_length
        if steps < self.min_tokens or steps % self.every:
            return done
        rows = input_ids[:, self.prompt_length :].tolist()  # one host copy every `every` steps
        for i, ids in enumerate(rows):
            if i in self.stopped or self.finished_ids.intersection(ids):
                done[i] = i in self.stopped  # generate keeps a finished row finished anyway
                continue
            if self.looping(ids):
                done[i] = True
                self.stopped.add(i)
        return done
