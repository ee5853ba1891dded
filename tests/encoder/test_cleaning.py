"""PixArt-α caption cleaning: every rule on its own, the two passes, and agreement with the original."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recaption.encoder import cleaning as c

SHARED_DATA = (
    Path(os.environ["RECAPTION_SHARED"]) / "data"
    if os.environ.get("RECAPTION_SHARED")
    else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
)

# (rule, input, expected): each rule applied alone.
RULE_EXAMPLES = [
    (c.decode_url_escapes, "red%20car+for%20sale", "red car for sale"),
    (c.decode_url_escapes, "caf%C3%A9", "café"),
    (c.decode_url_escapes, "c++ code", "c   code"),  # '+' is a space in form encoding
    (c.lowercase, "  A Red CAR ", "a red car"),
    (c.unwrap_person_tag, "<person> riding a bike", "person riding a bike"),
    (c.remove_urls, "see https://shop.example.com/a/b now", "see  now"),
    (c.remove_urls, "visit www.example.org/page today", "visit  today"),
    (c.remove_urls, "go to http://example.de", "go to example.de"),  # unknown TLD: only the scheme
    (c.remove_urls, "a holiday in.italy", "a holiday "),  # '.it' + word characters counts as a domain
    (c.remove_urls, "mail jane.doe.com@x", "mail jane.doe.com@x"),  # followed by '@': kept
    (c.remove_urls, "a plain caption, no links.", "a plain caption, no links."),
    (c.strip_html, "<a href='x'>tom &amp; jerry</a> cartoon", "tom & jerry cartoon"),
    (c.strip_html, "<p>hi</p><script>var x = 1;</script> there<!-- note -->", "hi there"),
    (c.strip_html, "1 < 2 and 3 > 2", "1 < 2 and 3 > 2"),  # not tags
    (c.strip_html, "x &lt;b&gt; y", "x <b> y"),
    (c.remove_handles, "photo by @jane_doe99 today", "photo by  today"),
    (c.remove_handles, "mail me at me@example", "mail me at me"),
    (c.remove_cjk, "猫 cat 東京", " cat "),
    (c.remove_cjk, "ねこ ネコ 고양이", "ねこ ネコ 고양이"),  # kana and Hangul are outside the blocks
    (c.normalize_dashes, "a—b – c ‒ d －e", "a-b - c - d -e"),
    (c.normalize_dashes, "wait---what", "wait-what"),
    (c.normalize_quotes, "“big” «deal» `x´ ‘one’", '"big" "deal" "x" \'one\''),
    (c.remove_leftover_entities, "&quot;hi&quot and &amp;", "hi and ;"),
    (c.remove_ip_addresses, "server 10.0.0.1 down", "server   down"),
    (c.remove_trailing_article_ids, "chapter text 1:23 ", "chapter text "),
    (c.remove_trailing_article_ids, "meet at 1:23 today", "meet at 1:23 today"),
    (c.replace_escaped_newlines, "line one\\nline two", "line one line two"),
    (c.remove_hash_numbers, "item #12 and #123456", "item  and "),
    (c.remove_hash_numbers, "model #1234", "model #1234"),  # four digits: no rule
    (c.remove_long_numbers, "call 5551234 or 12345", "call  or 12345"),
    (c.remove_file_names, "img_0042.jpg of a dog", " of a dog"),
    (c.remove_file_names, "report.pdf and cat.webp", " and "),
    (c.collapse_quotes_and_ellipses, "'''sale''' wait...", '"sale" wait '),
    (c.replace_bad_punctuation, "***sale*** #deal rock & roll (new)", " sale   deal rock   roll  new "),
    (c.replace_bad_punctuation, "a/b|c\\d ©®™", "a b c d  "),
    (c.remove_lone_periods, "a cat . a dog", "a cat a dog"),
    (c.split_slugs, "this-is-my-cute-cat", "this is my cute cat"),
    (c.split_slugs, "my_cute_cat_photo_2", "my cute cat photo 2"),
    (c.split_slugs, "a well-known red-brick house", "a well-known red-brick house"),  # only two
    (c.fix_unicode, "  cafÃ© &amp;amp; ﬁsh  ", "café & fish"),
    (c.remove_product_codes, "model jc6640 in red", "model  in red"),
    (c.remove_product_codes, "jc6640vc and 6640vc231", " and "),
    (c.remove_product_codes, "mp3 ps4 1080p", "mp3 ps4 1080p"),
    (c.remove_shop_phrases, "shoes worldwide free shipping", "shoes "),
    (c.remove_shop_phrases, "free download free now", " now"),
    (c.remove_shop_phrases, "click for details here", " here"),
    (c.remove_shop_phrases, "a jpg images pack, page 12", "a  pack, "),
    (c.remove_mixed_codes, "part j2d1a2a ok", "part   ok"),
    (c.remove_dimensions, "poster 1920x1080 and 2.5×3 and 10х20", "poster  and  and "),
    (c.tidy_spacing, "title : subtitle", "title: subtitle"),
    (c.tidy_spacing, "red,blue and 3.5 m", "red, blue and 3.5 m"),
    (c.tidy_spacing, "a \t\n  b", "a b"),
    (c.trim_edges, '"a cat on a mat"', "a cat on a mat"),
    (c.trim_edges, "- a cat,", "a cat"),
    (c.trim_edges, ".htaccess", ""),
]


@pytest.mark.parametrize(
    ("rule", "text", "expected"),
    RULE_EXAMPLES,
    ids=[f"{r.__name__}-{i}" for i, (r, _, _) in enumerate(RULE_EXAMPLES)],
)
def test_rule(rule, text, expected):
    assert rule(text) == expected


def test_every_rule_has_an_example_and_a_docstring():
    tested = {rule for rule, _, _ in RULE_EXAMPLES}
    assert set(c.RULES) == tested
    for rule in c.RULES:
        assert len((rule.__doc__ or "").strip()) > 20, rule.__name__


def test_rules_run_in_the_original_order():
    names = [r.__name__ for r in c.RULES]
    # URLs before HTML (the HTML parser would eat '<person>' and keep link text), HTML before
    # handles, and ftfy only after the punctuation rules, as in PixArt's t5.py.
    assert names.index("unwrap_person_tag") < names.index("strip_html")
    assert names.index("remove_urls") < names.index("strip_html") < names.index("remove_handles")
    assert names.index("split_slugs") < names.index("fix_unicode") < names.index("remove_product_codes")
    assert names[-1] == "trim_edges"


def test_whole_caption():
    raw = (
        "Buy+Now%21 <b>Vintage</b> Red—Bike @shopbot https://shop.example.com/bikes/1 "
        "IMG_2041.JPG 猫 free shipping 1920x1080 #12"
    )
    assert c.clean_caption(raw) == "buy now! vintage red-bike"


@pytest.mark.parametrize(
    ("raw", "once", "twice"),
    [
        (
            "Cowshed_Gorgeous_Cow_Blissful_Body_Lotion_300ml_1372086846",
            "cowshed gorgeous cow blissful body lotion 300ml 1372086846",
            "cowshed gorgeous cow blissful body lotion 300ml",
        ),
        ("photo #12 ,,", "photo ,", "photo"),
    ],
)
def test_two_passes_as_pixart(raw, once, twice):
    assert c.PASSES == 2
    assert c.clean_caption_once(raw) == once
    assert c.clean_caption(raw) == twice
    assert c.clean_caption(raw, passes=1) == once


@pytest.mark.parametrize("text", ["", "   ", "https://example.com/x", "@someone", "東京"])
def test_captions_that_clean_to_nothing(text):
    assert c.clean_caption(text) == ""


# Hard inputs for the differential test below, one or more per rule.
EDGE_CASES = [
    "Researcher holding skulls (&lt;i&gt;Truong Son ... / &copy;: WWF-UK",
    "'Growth 2 Sculpture (study),' 2016-2019, Gallery 30 South",
    "Picture of '16 FLHX - Street Glide® - M9CC",
    '  "Quoted whole caption"  ',
    "A&amp;amp;B &quot;x&quot; &amp &nbsp;y",
    "C++ and C# programming %E2%9C%93",
    "Visit http://foo.co.uk/path?q=1 or ftp.site.ru/a-b_c",
    "path\\nnew line 127.0.0.1 #1 #1234 #12345 1234567",
    "this_is-a_long-slug_name",
    "cafÃ© Ã la carte ﬁne ｆｕｌｌ",
    "J2D1A2A 4k60hz AB123 abc12de 12ab34 10.5x20.5 x",
    ".hidden",
    "_leading and trailing+",
    "click on link download free page 3 jpeg image",
    "<person> and <unknown> tags <br/> done",
]


def _reference_cleaner():
    """diffusers' verbatim copy of DeepFloyd IF's cleaner (PixArt uses the same), applied twice."""
    pytest.importorskip("bs4")
    pytest.importorskip("ftfy")
    try:
        from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import PixArtAlphaPipeline
    except Exception as exc:  # pragma: no cover - depends on the installed diffusers
        pytest.skip(f"diffusers' PixArt pipeline not importable: {exc}")
    if not hasattr(PixArtAlphaPipeline, "_clean_caption"):  # pragma: no cover
        pytest.skip("this diffusers has no PixArtAlphaPipeline._clean_caption")

    class _Self:
        bad_punct_regex = PixArtAlphaPipeline.bad_punct_regex

    def ref(text: str) -> str:
        once = PixArtAlphaPipeline._clean_caption(_Self, text)  # type: ignore[arg-type]
        return PixArtAlphaPipeline._clean_caption(_Self, once)  # type: ignore[arg-type]

    return ref


def test_matches_the_original_on_edge_cases():
    ref = _reference_cleaner()
    for text in EDGE_CASES + [ex for _, ex, _ in RULE_EXAMPLES]:
        assert c.clean_caption(text) == ref(text), text


def test_matches_the_original_on_real_captions():
    ref = _reference_cleaner()
    laion = SHARED_DATA / "laion" / "img2dataset_test_1000.parquet"
    dense = SHARED_DATA / "dense" / "iiw_IIW-400.jsonl"
    if not laion.exists() or not dense.exists():
        pytest.skip(f"real captions not available under {SHARED_DATA} (../shared/data)")
    import pyarrow.parquet as pq

    texts = [t or "" for t in pq.read_table(laion, columns=["TEXT"]).column("TEXT").to_pylist()]
    with dense.open(encoding="utf-8") as f:
        texts += [json.loads(line)["IIW"] for line in f][:100]
    mismatches = [(t, c.clean_caption(t), ref(t)) for t in texts if c.clean_caption(t) != ref(t)]
    assert not mismatches, mismatches[:3]
