"""Mergeable noun statistics, and PixArt's Table 1 computed from them.

:class:`NounStats` holds only sums and exact counts (a noun → count table, per-caption histograms),
so statistics of shards merge exactly: the merge of any sharding, in any order, equals the
statistics of the whole. A worker counts one shard, saves its stats (:meth:`NounStats.save`) and
a final step merges them (:meth:`NounStats.merge_all`).

What the figures mean (PixArt-α, Table 1):

- **VN** (valid nouns): distinct nouns that appear *more than* ``T`` times (``T=10`` in the paper).
- **DN**: distinct nouns. **VN/DN**: the share of the vocabulary that recurs.
- **Total nouns**, **Average** (nouns per caption / per image).

VN depends on how many captions were counted: ten occurrences are rare in 11.2M captions (the
average size of the paper's rows, total ÷ average) and out of reach in 1,000. Two remedies are
reported, and labelled as such:

- **Scaled threshold**: ``T_N = max(1, T · N / 11.2M)``. It keeps the paper's *rate*
  (T occurrences per 11.2M captions) where that is at least one occurrence (N ≥ 1.12M for T=10);
  below that the floor of 1 applies, so VN_scaled is "nouns seen at least twice" (not a rate-
  matched figure, but it drops the one-off typos, ids and names that dominate DN).
- **Matched sample size** (:func:`compare`): the larger dataset is rarefied to the smaller one's
  caption count: the expected VN and DN of a random subsample of ``n`` captions, each noun's count
  thinned binomially (``p = n/N``), at one common threshold. This compares datasets of different
  sizes at a matched threshold *and* size, as ecologists compare species richness.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from recaption.errors import RecaptionError

if TYPE_CHECKING:
    from recaption.nouns.counter import CaptionNouns
    from recaption.nouns.options import NounOptions

#: Captions per row of PixArt's Table 1: total nouns ÷ nouns per image, about 11.2M for each row.
PIXART_ROW_CAPTIONS = 11_200_000
#: The paper's threshold: a valid noun appears more than 10 times.
DEFAULT_THRESHOLD = 10
STATS_FORMAT = "recaption.nouns.stats/1"


class IncompatibleStatsError(RecaptionError, ValueError):
    """Statistics counted with different options cannot be merged or compared."""


def scaled_threshold(captions: int, threshold: float = DEFAULT_THRESHOLD) -> float:
    """``max(1, T · N / 11.2M)``: the paper's rate threshold for ``N`` captions, floored at 1."""
    return max(1.0, threshold * captions / PIXART_ROW_CAPTIONS)


@dataclass
class NounStats:
    """Exact, mergeable counts over a set of captions (one shard, or a whole dataset).

    ``options`` is the :meth:`~recaption.nouns.options.NounOptions.fingerprint` of the counter that
    made them; only statistics with equal options merge.
    """

    options: dict[str, Any]
    captions: int = 0
    empty: int = 0
    truncated: int = 0
    replaced: int = 0
    non_latin: int = 0
    total_nouns: int = 0
    total_words: int = 0
    total_tokens: int = 0
    #: sum over captions of the number of *distinct* nouns in the caption
    distinct_per_caption_sum: int = 0
    #: noun → occurrences
    noun_counts: Counter[str] = field(default_factory=Counter)
    #: noun → captions containing it
    doc_freq: Counter[str] = field(default_factory=Counter)
    #: nouns per caption → captions; likewise words and tokens
    nouns_hist: Counter[int] = field(default_factory=Counter)
    words_hist: Counter[int] = field(default_factory=Counter)
    tokens_hist: Counter[int] = field(default_factory=Counter)

    @classmethod
    def for_options(cls, options: NounOptions | Mapping[str, Any]) -> NounStats:
        """Empty statistics for ``options`` (a :class:`NounOptions` or its fingerprint)."""
        fp = dict(options) if isinstance(options, Mapping) else options.fingerprint()
        return cls(options=fp)

    # -- accumulating -----------------------------------------------------------------------------
    def add(self, result: CaptionNouns) -> None:
        """Count one caption's result."""
        nouns = result.nouns
        self.captions += 1
        self.empty += result.empty
        self.truncated += result.truncated
        self.replaced += result.replaced
        self.non_latin += result.non_latin
        self.total_nouns += len(nouns)
        self.total_words += result.n_words
        self.total_tokens += result.n_tokens
        distinct = set(nouns)
        self.distinct_per_caption_sum += len(distinct)
        self.noun_counts.update(nouns)
        self.doc_freq.update(distinct)
        self.nouns_hist[len(nouns)] += 1
        self.words_hist[result.n_words] += 1
        self.tokens_hist[result.n_tokens] += 1

    def update(self, results: Iterable[CaptionNouns]) -> NounStats:
        """Count many results; returns ``self``."""
        for result in results:
            self.add(result)
        return self

    _SCALARS = (
        "captions",
        "empty",
        "truncated",
        "replaced",
        "non_latin",
        "total_nouns",
        "total_words",
        "total_tokens",
        "distinct_per_caption_sum",
    )
    _COUNTERS = ("noun_counts", "doc_freq", "nouns_hist", "words_hist", "tokens_hist")

    def merge(self, *others: NounStats) -> NounStats:
        """A new :class:`NounStats` holding ``self`` and ``others`` (exact; order never matters)."""
        out = NounStats(options=dict(self.options))
        for part in (self, *others):
            if part.options != out.options:
                diff = sorted(
                    k
                    for k in set(part.options) | set(out.options)
                    if part.options.get(k) != out.options.get(k)
                )
                raise IncompatibleStatsError(
                    f"noun statistics made with different options cannot be merged (differ in: "
                    f"{', '.join(diff)})"
                )
            for name in self._SCALARS:
                setattr(out, name, getattr(out, name) + getattr(part, name))
            for name in self._COUNTERS:
                # Counter.update adds counts (and, unlike ``+``, keeps the types exact).
                getattr(out, name).update(getattr(part, name))
        return out

    def __add__(self, other: NounStats) -> NounStats:
        return self.merge(other)

    @classmethod
    def merge_all(cls, parts: Iterable[NounStats]) -> NounStats:
        """Merge any number of statistics (at least one)."""
        parts = list(parts)
        if not parts:
            raise ValueError("merge_all needs at least one NounStats")
        return parts[0].merge(*parts[1:])

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; deterministic (sorted), so equal stats give identical files."""
        nouns = sorted(self.noun_counts)
        return {
            "format": STATS_FORMAT,
            "options": self.options,
            **{name: getattr(self, name) for name in self._SCALARS},
            # one row per noun: [noun, count, captions containing it]
            "nouns": [[n, self.noun_counts[n], self.doc_freq[n]] for n in nouns],
            "nouns_hist": _hist_rows(self.nouns_hist),
            "words_hist": _hist_rows(self.words_hist),
            "tokens_hist": _hist_rows(self.tokens_hist),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NounStats:
        if data.get("format") != STATS_FORMAT:
            raise ValueError(
                f"not noun statistics (format {data.get('format')!r}, expected {STATS_FORMAT!r})"
            )
        out = cls(options=dict(data["options"]))
        for name in cls._SCALARS:
            setattr(out, name, int(data[name]))
        for noun, count, df in data["nouns"]:
            out.noun_counts[noun] = int(count)
            out.doc_freq[noun] = int(df)
        for name in ("nouns_hist", "words_hist", "tokens_hist"):
            getattr(out, name).update({int(k): int(v) for k, v in data[name]})
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> NounStats:
        return cls.from_dict(json.loads(text))

    def save(self, url: str) -> None:
        """Write to ``url`` (any fsspec URL) atomically."""
        from recaption import io

        io.write_text_atomic(url, self.to_json())

    @classmethod
    def load(cls, url: str) -> NounStats:
        from recaption import io

        return cls.from_json(io.read_text(url))

    # -- figures ----------------------------------------------------------------------------------
    @property
    def distinct_nouns(self) -> int:
        return len(self.noun_counts)

    def valid_nouns(self, threshold: float = DEFAULT_THRESHOLD) -> int:
        """VN: distinct nouns appearing more than ``threshold`` times."""
        return sum(1 for c in self.noun_counts.values() if c > threshold)

    def expected_vn_dn(self, captions: int, threshold: float) -> tuple[float, float]:
        """Expected (VN, DN) in a random subsample of ``captions`` of these captions.

        Each noun's count is thinned binomially with ``p = captions / N``, which treats a
        noun's occurrences as independent draws; exact when ``captions >= N`` (no thinning).
        """
        n_total = self.captions
        if captions >= n_total:
            return float(self.valid_nouns(threshold)), float(self.distinct_nouns)
        p = captions / n_total
        spectrum = Counter(self.noun_counts.values())  # count → how many nouns have it
        vn = dn = 0.0
        for count, nouns in spectrum.items():
            dn += nouns * (1.0 - _binom_cdf(0, count, p))
            vn += nouns * (1.0 - _binom_cdf(math.floor(threshold), count, p))
        return vn, dn

    def table1(self, threshold: float = DEFAULT_THRESHOLD, top_k: int = 20, label: str = "") -> Table1Row:
        """This dataset's row of PixArt's Table 1, with the extra columns (see module docs)."""
        n = self.captions
        dn = self.distinct_nouns
        vn = self.valid_nouns(threshold)
        t_scaled = scaled_threshold(n, threshold)
        vn_scaled = self.valid_nouns(t_scaled)
        top = sorted(self.noun_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        return Table1Row(
            label=label,
            captions=n,
            threshold=threshold,
            vn=vn,
            dn=dn,
            vn_dn=_ratio(vn, dn),
            total_nouns=self.total_nouns,
            nouns_per_caption=_ratio(self.total_nouns, n),
            scaled_threshold=t_scaled,
            vn_scaled=vn_scaled,
            vn_scaled_dn=_ratio(vn_scaled, dn),
            hapax=sum(1 for c in self.noun_counts.values() if c == 1),
            nouns_per_100_words=100.0 * _ratio(self.total_nouns, self.total_words),
            distinct_nouns_per_caption=_ratio(self.distinct_per_caption_sum, n),
            nouns_median=_percentile(self.nouns_hist, 0.5),
            words_per_caption=_ratio(self.total_words, n),
            words_median=_percentile(self.words_hist, 0.5),
            words_p95=_percentile(self.words_hist, 0.95),
            tokens_per_caption=_ratio(self.total_tokens, n),
            tokens_median=_percentile(self.tokens_hist, 0.5),
            empty=self.empty,
            truncated=self.truncated,
            replaced=self.replaced,
            non_latin=self.non_latin,
            top_nouns=[[noun, count] for noun, count in top],
        )


@dataclass
class Table1Row:
    """One dataset's figures: Table 1's columns first, then the extra ones."""

    label: str
    captions: int
    threshold: float
    vn: int
    dn: int
    vn_dn: float
    total_nouns: int
    nouns_per_caption: float
    scaled_threshold: float
    vn_scaled: int
    vn_scaled_dn: float
    hapax: int
    nouns_per_100_words: float
    distinct_nouns_per_caption: float
    nouns_median: int
    words_per_caption: float
    words_median: int
    words_p95: int
    tokens_per_caption: float
    tokens_median: int
    empty: int
    truncated: int
    replaced: int
    non_latin: int
    top_nouns: list[list[Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Comparison:
    """How two datasets' nouns differ: coverage, and VN/DN at a matched size and threshold."""

    a: str
    b: str
    shared: int
    only_a: int
    only_b: int
    jaccard: float
    #: nouns of ``a`` absent from ``b``, most frequent first: [noun, count in a]
    only_a_top: list[list[Any]]
    only_b_top: list[list[Any]]
    matched_captions: int
    matched_threshold: float
    a_expected_vn: float
    a_expected_dn: float
    a_expected_vn_dn: float
    b_expected_vn: float
    b_expected_dn: float
    b_expected_vn_dn: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(
    a: NounStats,
    b: NounStats,
    *,
    label_a: str = "a",
    label_b: str = "b",
    threshold: float = DEFAULT_THRESHOLD,
    top_k: int = 20,
) -> Comparison:
    """Nouns one dataset covers and the other lacks, and VN/DN at a matched size and threshold.

    The matched size is the smaller caption count; the matched threshold is the scaled threshold
    (:func:`scaled_threshold`) at that size, the same for both.
    """
    if a.options != b.options:
        raise IncompatibleStatsError(
            f"{label_a!r} and {label_b!r} were counted with different noun options; "
            "their figures are not comparable"
        )
    va, vb = set(a.noun_counts), set(b.noun_counts)
    only_a = va - vb
    only_b = vb - va
    n = min(a.captions, b.captions)
    t = scaled_threshold(n, threshold)
    a_vn, a_dn = a.expected_vn_dn(n, t)
    b_vn, b_dn = b.expected_vn_dn(n, t)

    def top(stats: NounStats, nouns: set[str]) -> list[list[Any]]:
        ranked = sorted(nouns, key=lambda w: (-stats.noun_counts[w], w))[:top_k]
        return [[w, stats.noun_counts[w]] for w in ranked]

    return Comparison(
        a=label_a,
        b=label_b,
        shared=len(va & vb),
        only_a=len(only_a),
        only_b=len(only_b),
        jaccard=_ratio(len(va & vb), len(va | vb)),
        only_a_top=top(a, only_a),
        only_b_top=top(b, only_b),
        matched_captions=n,
        matched_threshold=t,
        a_expected_vn=a_vn,
        a_expected_dn=a_dn,
        a_expected_vn_dn=_ratio(a_vn, a_dn),
        b_expected_vn=b_vn,
        b_expected_dn=b_dn,
        b_expected_vn_dn=_ratio(b_vn, b_dn),
    )


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den else 0.0


def _hist_rows(hist: Counter[int]) -> list[list[int]]:
    return [[k, hist[k]] for k in sorted(hist)]


def _percentile(hist: Counter[int], q: float) -> int:
    """Nearest-rank percentile of a value → count histogram (0 when empty)."""
    total = sum(hist.values())
    if not total:
        return 0
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return value
    return max(hist)  # pragma: no cover - unreachable


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n can be in the millions)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    lg_n1 = math.lgamma(n + 1)
    total = 0.0
    for i in range(k + 1):
        total += math.exp(lg_n1 - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
    return min(1.0, total)
