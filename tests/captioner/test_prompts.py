from __future__ import annotations

import pytest

from recaption.captioner.prompts import (
    LAION_PROMPT,
    SAM_PROMPT,
    PromptTemplate,
    clean_hint,
    resolve_prompt,
)
from recaption.errors import ConfigError


def test_presets_are_pixarts_prompts():
    assert (
        resolve_prompt("sam").render().text == "Describe this image and its style in a very detailed manner"
    )
    laion = resolve_prompt("laion").render("a red bus in London")
    assert laion.text == (
        "Give the caption of this image 'a red bus in London', "
        "describe this image and its style in a very detailed manner"
    )
    assert not laion.fallback


@pytest.mark.parametrize(
    ("alias", "target"), [("pixart-sam", SAM_PROMPT), ("PixArt-LAION", LAION_PROMPT), (" SAM ", SAM_PROMPT)]
)
def test_aliases_and_case(alias, target):
    assert resolve_prompt(alias).template == target


@pytest.mark.parametrize("raw", ["", "   ", "\n\t", None, "''", '""'])
def test_empty_raw_caption_falls_back_to_sam_and_says_so(raw):
    out = resolve_prompt("laion").render(raw)
    assert out.text == SAM_PROMPT
    assert out.fallback
    assert "fallback" in out.reason
    assert "laion" in out.reason


def test_sam_prompt_ignores_raw_caption():
    out = resolve_prompt("sam").render("whatever")
    assert out.text == SAM_PROMPT
    assert not out.fallback


def test_custom_template_with_field():
    tpl = resolve_prompt("Caption: {raw_caption}. Now describe it in detail.")
    assert tpl.name == "custom"
    assert tpl.uses_raw_caption
    assert tpl.render("a cat").text == "Caption: a cat. Now describe it in detail."
    assert tpl.render("").fallback


def test_custom_template_without_field_and_literal_braces():
    tpl = resolve_prompt("Describe the image; output {{json}} only")
    assert not tpl.uses_raw_caption
    assert tpl.render("ignored").text == "Describe the image; output {json} only"


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("Describe {caption} please", "{caption}"),
        ("Describe {} please", "{}"),
        ("Describe {0} please", "{0}"),
        ("Describe {raw_caption.upper} please", "{raw_caption.upper}"),
    ],
)
def test_unknown_field_names_the_allowed_fields(template, needle):
    with pytest.raises(ConfigError) as info:
        resolve_prompt(template)
    msg = str(info.value)
    assert info.value.option == "prompt"
    assert needle in msg
    assert "{raw_caption}" in msg


@pytest.mark.parametrize("template", ["Describe {raw_caption", "Describe raw_caption} now", "a { b"])
def test_bad_format_is_a_config_error(template):
    with pytest.raises(ConfigError) as info:
        resolve_prompt(template)
    assert "{raw_caption}" in str(info.value)


@pytest.mark.parametrize("template", ["Describe {raw_caption!r} now", "Describe {raw_caption:>30} now"])
def test_conversions_and_format_specs_refused(template):
    with pytest.raises(ConfigError, match="format spec or conversion"):
        resolve_prompt(template)


def test_single_word_that_is_no_preset_is_refused():
    with pytest.raises(ConfigError) as info:
        resolve_prompt("lion")
    assert "'sam'" in str(info.value)
    assert "'laion'" in str(info.value)


def test_empty_spec_and_bad_fallback():
    with pytest.raises(ConfigError):
        resolve_prompt("   ")
    with pytest.raises(ConfigError, match="fallback_prompt"):
        PromptTemplate(LAION_PROMPT, fallback="Use {raw_caption}")


def test_quotes_inside_the_hint_cannot_close_the_quoted_caption():
    out = resolve_prompt("laion").render("Kid's 'best' toy")
    hint = out.text.split("'")[1]  # the template's own quotes are the only straight ones left
    assert hint == "Kid’s ’best’ toy"
    assert out.text.count("'") == 2


def test_double_quoted_template_replaces_double_quotes():
    tpl = resolve_prompt('The alt text is "{raw_caption}". Describe the image.')
    assert tpl.render('a "quoted" word').text == "The alt text is \"a 'quoted' word\". Describe the image."


def test_newlines_control_chars_and_wrapping_quotes_are_cleaned():
    assert clean_hint('  "a\nb\tc\x00d"  ') == "a b cd"
    assert clean_hint("line one\r\n\r\nline two") == "line one line two"


def test_long_hints_are_cut_at_a_word_boundary():
    raw = " ".join(["keyword"] * 200)
    hint = clean_hint(raw, max_chars=100)
    assert len(hint) <= 101
    assert hint.endswith("…")
    assert hint[:-1].split(" ")[-1] == "keyword"
    assert clean_hint(raw, max_chars=0) == raw  # 0: no cap
    out = resolve_prompt("laion", max_hint_chars=50).render(raw)
    assert len(out.text) < len(LAION_PROMPT) + 55


def test_braces_in_the_raw_caption_are_text():
    assert (
        resolve_prompt("laion")
        .render("{raw_caption} {0} }{")
        .text.startswith("Give the caption of this image '{raw_caption} {0} }{'")
    )
