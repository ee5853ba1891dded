"""The paper's finding, in direction, on real captions: dense captions carry several times more
nouns per caption than LAION alt-text, and a larger share of their vocabulary recurs (VN/DN)."""

from __future__ import annotations

import json

import pytest

from recaption.nouns.report import write_reports
from recaption.nouns.stats import compare


@pytest.fixture(scope="module")
def real_stats(counter, laion_texts, iiw_texts):
    return {"LAION": counter.count_stats(laion_texts), "IIW": counter.count_stats(iiw_texts)}


def test_dense_captions_carry_several_times_more_nouns(real_stats) -> None:
    laion = real_stats["LAION"].table1()
    dense = real_stats["IIW"].table1()
    assert laion.captions == 1000
    assert dense.captions == 400
    assert dense.nouns_per_caption >= 3 * laion.nouns_per_caption
    assert dense.distinct_nouns_per_caption >= 3 * laion.distinct_nouns_per_caption
    # LAION alt-text is terse; the paper's raw LAION row averages 6.4 nouns per image
    assert 2 <= laion.nouns_per_caption <= 12


def test_dense_captions_have_a_higher_vn_dn_at_a_matched_threshold(real_stats) -> None:
    laion, dense = real_stats["LAION"], real_stats["IIW"]
    # matched size and threshold: LAION rarefied to 400 captions, both at the same threshold
    c = compare(laion, dense, label_a="LAION", label_b="IIW")
    assert c.matched_captions == 400
    assert c.b_expected_vn_dn > c.a_expected_vn_dn
    for threshold in (1, 2, 5, 10):
        matched = compare(laion, dense, threshold=threshold * 11_200_000 / 400)
        assert matched.matched_threshold == pytest.approx(threshold)
        assert matched.b_expected_vn_dn > matched.a_expected_vn_dn
    # and, without rarefaction, at the paper's fixed threshold
    assert dense.table1(10).vn_dn > laion.table1(10).vn_dn


def test_report_on_real_data(real_stats, laion_texts, tmp_path) -> None:
    urls = write_reports(real_stats, str(tmp_path), top_k=10)
    report = json.loads((tmp_path / "nouns.json").read_text(encoding="utf-8"))
    assert [d["label"] for d in report["datasets"]] == ["LAION", "IIW"]
    # missing, empty or whitespace-only alt-texts, as the counter defines them
    assert report["datasets"][0]["empty"] == sum(not (t or "").strip() for t in laion_texts)
    assert report["comparisons"][0]["only_b_top"]  # nouns IIW covers and LAION lacks
    assert urls["markdown"].endswith("nouns.md")
