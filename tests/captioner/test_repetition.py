from __future__ import annotations

import json

import pytest

from recaption.captioner.repetition import (
    detect_repetition,
    detect_text_repetition,
    duplicate_fraction,
    tail_loop,
    tokenize_words,
)

from .conftest import shared_path


def _iiw_descriptions() -> list[str]:
    path = shared_path("dense", "iiw_IIW-400.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    texts = [r["IIW"] for r in rows if r.get("IIW")] + [r["IIW-P5B"] for r in rows if r.get("IIW-P5B")]
    assert len(texts) >= 400
    return texts


def test_real_dense_captions_are_not_flagged():
    texts = _iiw_descriptions()
    flagged = [(r.reason, t[:80]) for t in texts if (r := detect_text_repetition(t)).repetitive]
    assert flagged == []
    # and they stay clear of the threshold, not just under it
    assert max(detect_text_repetition(t).duplicate_fraction for t in texts) < 0.25


def test_real_captions_with_a_loop_appended_are_flagged():
    texts = _iiw_descriptions()[:50]
    for text in texts:
        looped = text + " The flower is blue." * 6
        report = detect_text_repetition(looped)
        assert report.repetitive, text[:80]
        assert report.period == 5
        assert report.repeats >= 6


@pytest.mark.parametrize(
    "text",
    [
        "very " * 40,
        "A cat on a mat. " + "and a dog, " * 10,
        "The image shows a street. "
        + " ".join(["There is a red car parked on the left side of the road."] * 4),
        "a photo of " + ", ".join(["blue"] * 30),
    ],
)
def test_synthetic_loops_are_flagged(text):
    report = detect_text_repetition(text)
    assert report.repetitive
    assert 0 < report.score <= 1
    assert report.reason


def test_repeated_sentences_in_the_middle_are_flagged_by_duplicates():
    middle = " ".join(["The sky is clear and blue with a few small white clouds."] * 4)
    text = f"A harbour at noon. {middle} Boats are moored along a stone pier, and gulls circle above them."
    report = detect_text_repetition(text)
    assert report.repetitive
    assert report.period == 0  # not at the tail
    assert report.duplicate_fraction >= 0.3


@pytest.mark.parametrize(
    "text",
    [
        "",
        "very very good",
        "A red car, a red car. Then the street.",
        "Left to right: one, two, three, four, five, six, seven.",
        "ha ha ha",
    ],
)
def test_short_or_normal_text_is_not_flagged(text):
    assert not detect_text_repetition(text).repetitive


def test_tail_loop_finds_the_shortest_period():
    assert tail_loop(list("xyzabababab")) == (2, 4, 8)
    assert tail_loop(list("abcd")) == (0, 0, 0)
    assert tail_loop([]) == (0, 0, 0)
    period, repeats, covered = tail_loop([1, 2, 3] * 5 + [1])
    assert period == 3
    assert repeats == 5
    assert covered == 16


def test_duplicate_fraction():
    assert duplicate_fraction([1, 2, 3, 4, 5], n=2) == 0.0
    assert duplicate_fraction([1, 2, 1, 2, 1, 2], n=2) == pytest.approx(3 / 5)
    assert duplicate_fraction([1], n=4) == 0.0


def test_works_on_token_ids():
    ids = list(range(100, 160)) + [7, 8, 9, 10] * 8
    report = detect_repetition(ids)
    assert report.repetitive
    assert report.period == 4
    assert report.repeats == 8


def test_tokenize_words_splits_punctuation():
    assert tokenize_words("A cat, a Dog.") == ["a", "cat", ",", "a", "dog", "."]


def test_loops_without_spaces_are_caught_on_the_token_ids():
    """'ThereThereThere...' is one word to the text check; its token ids loop with period 1."""
    from recaption.captioner.repetition import detect_caption_repetition

    text = "The image shows " + "There" * 40
    assert not detect_text_repetition(text).repetitive
    ids = [10, 11, 12] + [77] * 40
    rep = detect_caption_repetition(text, ids)
    assert rep.repetitive and rep.reason.startswith("tokens:") and rep.period == 1
    # a two-token loop ("ha" "ha" as 5, 6) too
    assert detect_caption_repetition("haha" * 20, [5, 6] * 20).repetitive
    # an ordinary caption's ids, even with repeated subwords, are not a loop
    ordinary = [3, 9, 14, 9, 22, 31, 9, 40, 51, 9, 14, 60, 72, 9]
    assert not detect_caption_repetition("a cat on a mat by a door near a cat flap", ordinary).repetitive
    # without ids it is the text check alone
    assert detect_caption_repetition(text) == detect_text_repetition(text)
