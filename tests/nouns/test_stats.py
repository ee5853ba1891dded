from __future__ import annotations

import math
import random

import pytest

from recaption.nouns.counter import CaptionNouns
from recaption.nouns.options import NounOptions
from recaption.nouns.stats import (
    PIXART_ROW_CAPTIONS,
    IncompatibleStatsError,
    NounStats,
    _binom_cdf,
    compare,
    scaled_threshold,
)

FP = NounOptions().fingerprint()


def cap(nouns: list[str], words: int | None = None, **flags: bool) -> CaptionNouns:
    n_words = len(nouns) * 3 if words is None else words
    return CaptionNouns(nouns=nouns, n_words=n_words, n_tokens=n_words + 1, n_chars=n_words * 5, **flags)


def random_captions(seed: int, n: int = 300) -> list[CaptionNouns]:
    rng = random.Random(seed)
    vocab = [f"noun{i}" for i in range(60)]
    out = []
    for _ in range(n):
        k = rng.choice([0, 0, 1, 2, 3, 5, 8, 13])
        # skewed draw, so some nouns are frequent and many are rare
        nouns = [vocab[min(int(rng.expovariate(0.15)), 59)] for _ in range(k)]
        out.append(cap(nouns, words=k * 4 + rng.randint(0, 5), empty=k == 0, truncated=rng.random() < 0.05))
    return out


def stats_of(captions: list[CaptionNouns]) -> NounStats:
    return NounStats.for_options(FP).update(captions)


def test_table1_on_hand_counted_captions() -> None:
    caps = [
        cap(["dog"] * 12 + ["cat"] * 11, words=46),  # dog 12, cat 11 in one caption
        cap(["cat", "tree"], words=10),
        cap(["tree", "sky", "dog"], words=10),
        cap([], words=0, empty=True),
    ]
    s = stats_of(caps)
    # counts: dog 13, cat 12, tree 2, sky 1
    t = s.table1(threshold=10, top_k=3)
    assert t.captions == 4
    assert t.dn == 4
    assert t.vn == 2  # dog and cat appear more than 10 times
    assert t.vn_dn == 0.5
    assert t.total_nouns == 28
    assert t.nouns_per_caption == 7.0
    assert t.empty == 1
    assert t.hapax == 1
    assert t.nouns_per_100_words == pytest.approx(100 * 28 / 66)
    assert t.distinct_nouns_per_caption == pytest.approx((2 + 2 + 3 + 0) / 4)
    assert t.top_nouns == [["dog", 13], ["cat", 12], ["tree", 2]]
    assert t.words_per_caption == 66 / 4
    assert t.words_median == 10
    assert t.nouns_median == 2
    assert s.doc_freq == {"dog": 2, "cat": 2, "tree": 2, "sky": 1}
    # "more than T", not "at least T"
    assert s.valid_nouns(12) == 1
    assert s.valid_nouns(13) == 0


def test_scaled_threshold() -> None:
    assert scaled_threshold(1000) == 1.0  # floor
    assert scaled_threshold(PIXART_ROW_CAPTIONS) == 10.0
    assert scaled_threshold(2 * PIXART_ROW_CAPTIONS) == 20.0
    assert scaled_threshold(PIXART_ROW_CAPTIONS, threshold=5) == 5.0
    s = stats_of([cap(["a", "a", "b"])])
    t = s.table1()
    assert t.scaled_threshold == 1.0
    assert t.vn_scaled == 1  # "a" seen twice, more than once


@pytest.mark.parametrize("seed", range(5))
def test_merge_is_exact_for_any_sharding_and_order(seed: int) -> None:
    captions = random_captions(seed)
    whole = stats_of(captions)
    rng = random.Random(1000 + seed)
    for _ in range(5):
        k = rng.randint(1, 12)
        cuts = sorted(rng.sample(range(1, len(captions)), k - 1)) if k > 1 else []
        shards = [captions[a:b] for a, b in zip([0, *cuts], [*cuts, len(captions)], strict=True)]
        parts = [stats_of(s) for s in shards]
        rng.shuffle(parts)
        merged = NounStats.merge_all(parts)
        assert merged == whole
        # byte-identical serialisation, whatever the sharding
        assert merged.to_json() == whole.to_json()
        assert merged.table1() == whole.table1()


def test_merge_is_associative_and_commutative() -> None:
    a, b, c = (stats_of(random_captions(s, 80)) for s in (1, 2, 3))
    assert (a + b) + c == a + (b + c)
    assert a + b == b + a
    assert a.merge(b, c) == c.merge(a, b)
    # merging makes a new object and leaves the parts alone
    before = a.to_json()
    a.merge(b)
    assert a.to_json() == before


def test_merge_refuses_different_options() -> None:
    a = NounStats.for_options(NounOptions())
    b = NounStats.for_options(NounOptions(lemmatize=False))
    with pytest.raises(IncompatibleStatsError, match="lemmatize"):
        a.merge(b)
    with pytest.raises(IncompatibleStatsError):
        compare(a, b)


def test_serialisation_round_trip(tmp_path) -> None:
    s = stats_of(random_captions(7))
    assert NounStats.from_json(s.to_json()) == s
    path = str(tmp_path / "part-00000.nouns.json")
    s.save(path)
    assert NounStats.load(path) == s
    mem = "memory://nouns-test/part-00001.nouns.json"
    s.save(mem)
    assert NounStats.load(mem) == s
    with pytest.raises(ValueError, match="not noun statistics"):
        NounStats.from_dict({"format": "something else"})


def test_binomial_cdf_against_direct_sums() -> None:
    for n, p, k in [(3, 0.5, 1), (10, 0.1, 2), (50, 0.3, 10), (7, 0.9, 6)]:
        direct = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
        assert _binom_cdf(k, n, p) == pytest.approx(direct, rel=1e-9)
    assert _binom_cdf(5, 5, 0.3) == 1.0
    assert _binom_cdf(-1, 5, 0.3) == 0.0
    # large counts stay finite
    assert 0.0 <= _binom_cdf(10, 5_000_000, 1e-6) <= 1.0


def test_rarefaction() -> None:
    s = stats_of([cap(["a", "a", "a"]), cap(["b"]), cap(["c", "c"]), cap([])])
    # no thinning at or above the full size
    assert s.expected_vn_dn(4, 1) == (2.0, 3.0)
    assert s.expected_vn_dn(10, 1) == (2.0, 3.0)
    vn, dn = s.expected_vn_dn(2, 1)  # p = 0.5
    # a (3): P(X>=1)=7/8, P(X>1)=1/2; b (1): 1/2, 0; c (2): 3/4, 1/4
    assert dn == pytest.approx(7 / 8 + 1 / 2 + 3 / 4)
    assert vn == pytest.approx(1 / 2 + 0 + 1 / 4)


def test_compare_coverage_and_matched_figures() -> None:
    a = stats_of([cap(["dog", "cat"]), cap(["dog", "tree"])])
    b = stats_of([cap(["dog", "sky", "sky"]), cap(["sea"]), cap(["sky"]), cap(["dog"])])
    c = compare(a, b, label_a="A", label_b="B", threshold=10, top_k=5)
    assert (c.a, c.b) == ("A", "B")
    assert c.shared == 1
    assert c.only_a == 2
    assert c.only_b == 2
    assert c.jaccard == pytest.approx(1 / 5)
    assert c.only_a_top == [["cat", 1], ["tree", 1]]
    assert c.only_b_top == [["sky", 3], ["sea", 1]]
    assert c.matched_captions == 2
    assert c.matched_threshold == 1.0
    assert (c.a_expected_vn, c.a_expected_dn) == (1.0, 3.0)  # a is not thinned
    assert c.b_expected_dn < 4.0  # b is rarefied to 2 captions
