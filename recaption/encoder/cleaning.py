"""PixArt-α's caption cleaning: DeepFloyd IF's documented ``clean_caption`` rules, as named steps.

PixArt-α trained on captions that went through DeepFloyd IF's ``clean_caption`` **twice**
(``diffusion/model/t5.py``, ``T5Embedder.text_preprocessing``), so the ``alpha`` preset must feed the
T5 encoder text cleaned the same way. This module is our own implementation of those rules: each
rule is one function below, with what it does and why, and :data:`RULES` lists them in the order
the original applies them. :func:`clean_caption` runs the whole list twice, as PixArt does.

The rules are web-scraping hygiene for alt-text (LAION), and they are deliberately *lossy*; some
look odd but are kept because the model was trained on their output:

- ``+`` is decoded as a space (URL form decoding runs first), so ``C++`` becomes ``c``.
- URL removal only knows the TLDs ``com co ru net org edu gov it``, and a domain-like word such as
  ``in.italy`` is removed too (``.it`` followed by word characters).
- ``#123`` and ``#12345`` are removed but ``#1234`` is not (the original has no rule for 4 digits;
  its ``#`` then becomes a space like any bad punctuation).
- Only the CJK blocks U+31C0–U+9FFF are removed (strokes, enclosed letters, compatibility,
  ideographs); Hiragana, Katakana and Hangul stay.
- Word-splitting of ``-``/``_`` happens only when a caption holds more than three of them.

Two steps rely on libraries, as the original does: HTML is parsed by BeautifulSoup's
``html.parser`` (tags, comments and ``<script>``/``<style>`` bodies dropped, entities decoded), and
``ftfy.fix_text`` repairs mojibake (``cafÃ©`` → ``café``) and normalises Unicode. Both packages are
imported only when the cleaner first runs.

Differences from the original that cannot change the output: the seven CJK ranges are one
character class (they are contiguous), and regexes are compiled once.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import Callable
from functools import cache

__all__ = ["PASSES", "RULES", "clean_caption", "clean_caption_once"]

PASSES = 2
"""PixArt-α applies the cleaner twice (the second pass catches what the first one exposed)."""


# -- 1. decoding and case ------------------------------------------------------------------------
def decode_url_escapes(text: str) -> str:
    """Decode URL form escapes: ``%20`` → space, ``%C3%A9`` → ``é`` and ``+`` → space.

    Alt-text scraped from URLs is often still form-encoded. Side effect kept on purpose: every
    ``+`` becomes a space.
    """
    return urllib.parse.unquote_plus(text)


def lowercase(text: str) -> str:
    """Strip surrounding whitespace and lowercase everything (PixArt-α's captions are lowercase)."""
    return text.strip().lower()


_PERSON_TAG = re.compile("<person>")


def unwrap_person_tag(text: str) -> str:
    """``<person>`` → ``person``: an anonymisation placeholder that the HTML step would delete."""
    return _PERSON_TAG.sub("person", text)


# -- 2. markup and web noise ---------------------------------------------------------------------
# A domain on one of the few TLDs the original knows, with an optional path; not followed by '@'
# (so the local part of an e-mail address is left to the @handle rule).
_DOMAIN = r"[a-zA-Z0-9.\-]+\.(?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@)"
# Only the scheme and its slashes (or the first character after ':') are matched here; the host is
# removed by the domain alternative when its TLD is known, and stays otherwise.
_URL_HTTP = re.compile(rf"\b(?:https?:(?:/{{1,3}}|[a-zA-Z0-9%])|{_DOMAIN})")
_URL_WWW = re.compile(rf"\b(?:www:(?:/{{1,3}}|[a-zA-Z0-9%])|{_DOMAIN})")


def remove_urls(text: str) -> str:
    """Remove ``http(s)://`` (and ``www:``) prefixes and domains with a known TLD, with their path.

    ``see https://shop.example.com/a/b now`` → ``see  now``. A host on another TLD keeps its name:
    ``https://example.de`` → ``example.de``.
    """
    return _URL_WWW.sub("", _URL_HTTP.sub("", text))


@cache
def _soup_factory() -> Callable[[str], str]:
    import warnings

    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

    # Captions such as "photo.jpg" look like file names to bs4, which then warns on every call.
    warnings.filterwarnings("ignore", category=MarkupResemblesLocatorWarning)
    return lambda markup: BeautifulSoup(markup, features="html.parser").text


def strip_html(text: str) -> str:
    """Keep only the text of any HTML: tags, comments, ``<script>``/``<style>`` bodies go, entities
    are decoded (``<a href='x'>Tom &amp; Jerry</a>`` → ``Tom & Jerry``).

    Parsed with BeautifulSoup's ``html.parser``, as the original does, so malformed markup and
    stray ``<`` behave exactly as they did for PixArt's training captions.
    """
    return _soup_factory()(text)


_HANDLE = re.compile(r"@\w+\b")


def remove_handles(text: str) -> str:
    """Remove social-media handles and e-mail domains: ``photo by @jane_doe`` → ``photo by ``."""
    return _HANDLE.sub("", text)


# U+31C0 CJK Strokes, U+31F0 Katakana Phonetic Extensions, U+3200 Enclosed CJK Letters and Months,
# U+3300 CJK Compatibility, U+3400 CJK Unified Ideographs Extension A, U+4DC0 Yijing Hexagram
# Symbols, U+4E00–U+9FFF CJK Unified Ideographs: seven adjacent blocks, one range.
_CJK = re.compile("[\u31c0-\u9fff]+")


def remove_cjk(text: str) -> str:
    """Remove CJK ideographs and related symbols (U+31C0–U+9FFF): ``猫 cat`` → `` cat``.

    T5's English vocabulary has no pieces for them; they would become ``<unk>``.
    """
    return _CJK.sub("", text)


# -- 3. character normalisation ------------------------------------------------------------------
_DASH_CHARS = (
    "\u002d\u058a\u05be\u1400\u1806\u2010\u2011\u2012\u2013\u2014\u2015\u2e17\u2e1a\u2e3a\u2e3b"
    "\u2e40\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d"
)
_DASHES = re.compile(f"[{re.escape(_DASH_CHARS)}]+")


def normalize_dashes(text: str) -> str:
    """Every run of dash-like characters (hyphen, en/em dash, minus-like, CJK wave dash…) → ``-``."""
    return _DASHES.sub("-", text)


_DOUBLE_QUOTES = re.compile("[`\u00b4\u00ab\u00bb\u201c\u201d\u00a8]")
_SINGLE_QUOTES = re.compile("[\u2018\u2019]")


def normalize_quotes(text: str) -> str:
    """Typographic quotes to ASCII: `` ` ´ « » “ ” ¨`` → ``"`` and ``‘ ’`` → ``'``."""
    return _SINGLE_QUOTES.sub("'", _DOUBLE_QUOTES.sub('"', text))


_QUOT = re.compile("&quot;?")
_AMP = re.compile("&amp")


def remove_leftover_entities(text: str) -> str:
    """Delete ``&quot``/``&quot;`` and ``&amp`` that survived HTML decoding (double-escaped text)."""
    return _AMP.sub("", _QUOT.sub("", text))


# -- 4. identifiers and numbers ------------------------------------------------------------------
_IP_ADDRESS = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")


def remove_ip_addresses(text: str) -> str:
    """Dotted IPv4 addresses → a space: ``server 10.0.0.1 down`` → ``server   down``."""
    return _IP_ADDRESS.sub(" ", text)


_ARTICLE_ID = re.compile(r"\d:\d\d\s+$")


def remove_trailing_article_ids(text: str) -> str:
    """Remove a ``d:dd`` id (a time or chapter mark) when whitespace follows it at the very end."""
    return _ARTICLE_ID.sub("", text)


_ESCAPED_NEWLINE = re.compile(r"\\n")


def replace_escaped_newlines(text: str) -> str:
    r"""A literal backslash-n (``\n`` written out in scraped JSON) → a space."""
    return _ESCAPED_NEWLINE.sub(" ", text)


_SHORT_HASH_NUMBER = re.compile(r"#\d{1,3}\b")
_LONG_HASH_NUMBER = re.compile(r"#\d{5,}\b")


def remove_hash_numbers(text: str) -> str:
    """Remove ``#`` numbers of 1–3 or of 5+ digits (``#12``, ``#123456``); 4 digits are left."""
    return _LONG_HASH_NUMBER.sub("", _SHORT_HASH_NUMBER.sub("", text))


_LONG_NUMBER = re.compile(r"\b\d{6,}\b")


def remove_long_numbers(text: str) -> str:
    """Remove stand-alone numbers of six or more digits (SKUs, phone numbers, ids)."""
    return _LONG_NUMBER.sub("", text)


_MEDIA_EXTENSIONS = r"(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"
_FILE_NAME = re.compile(rf"\S+\.{_MEDIA_EXTENSIONS}")


def remove_file_names(text: str) -> str:
    """Remove file names with a media extension: ``img_0042.jpg of a dog`` → `` of a dog``."""
    return _FILE_NAME.sub("", text)


# -- 5. punctuation ------------------------------------------------------------------------------
_REPEATED_QUOTES = re.compile(r"[\"']{2,}")
_ELLIPSIS = re.compile(r"\.{2,}")


def collapse_quotes_and_ellipses(text: str) -> str:
    """Runs of quotes → one ``"`` (``'''sale'''``); runs of dots → a space (``wait...`` )."""
    return _ELLIPSIS.sub(" ", _REPEATED_QUOTES.sub('"', text))


_BAD_PUNCTUATION = re.compile(r"[#®•©™&@·º½¾¿¡§~()\[\]{}|\\/*]+")


def replace_bad_punctuation(text: str) -> str:
    """Runs of decoration and bracket characters (``#®•©™&@·º½¾¿¡§~()[]{}|\\/*``) → a space.

    ``***SALE***`` → `` SALE ``; ``rock & roll`` → ``rock   roll``.
    """
    return _BAD_PUNCTUATION.sub(" ", text)


_LONE_PERIOD = re.compile(r"\s+\.\s+")


def remove_lone_periods(text: str) -> str:
    """A period standing between spaces (`` . ``) → a space."""
    return _LONE_PERIOD.sub(" ", text)


_SLUG_SEPARATOR = re.compile(r"[-_]")


def split_slugs(text: str) -> str:
    """If the caption holds more than three ``-``/``_`` in all, every one becomes a space.

    Turns file-name slugs (``this-is-my-cute-cat``) into words; captions with a few hyphenated
    words (``a well-known red-brick house``) are left alone.
    """
    if len(_SLUG_SEPARATOR.findall(text)) > 3:
        return _SLUG_SEPARATOR.sub(" ", text)
    return text


@cache
def _fix_text() -> Callable[[str], str]:
    import ftfy

    return ftfy.fix_text


def fix_unicode(text: str) -> str:
    """Repair mojibake and odd Unicode with ``ftfy.fix_text``, decode HTML entities twice, strip.

    ``cafÃ©`` → ``café``; ``&amp;amp;`` → ``&``; ligatures and full-width letters become plain ones.
    """
    text = _fix_text()(text)
    return html.unescape(html.unescape(text)).strip()


# -- 6. shop spam and codes (after ftfy, so they see repaired text) -------------------------------
_CODE_LETTERS_DIGITS = re.compile(r"\b[a-zA-Z]{1,3}\d{3,15}\b")  # jc6640
_CODE_LETTERS_DIGITS_LETTERS = re.compile(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b")  # jc6640vc
_CODE_DIGITS_LETTERS_DIGITS = re.compile(r"\b\d+[a-zA-Z]+\d+\b")  # 6640vc231


def remove_product_codes(text: str) -> str:
    """Remove letter/digit product codes: ``jc6640``, ``jc6640vc``, ``6640vc231``.

    Real words of those shapes go too (``a380``, ``h2o``); ``mp3``, ``ps4`` and ``1080p`` stay
    (too few digits, or letters last).
    """
    text = _CODE_LETTERS_DIGITS.sub("", text)
    text = _CODE_LETTERS_DIGITS_LETTERS.sub("", text)
    return _CODE_DIGITS_LETTERS_DIGITS.sub("", text)


_SHIPPING = re.compile(r"(?:worldwide\s+)?(?:free\s+)?shipping")
_DOWNLOAD = re.compile(r"(?:free\s)?download(?:\sfree)?")
_CLICK = re.compile(r"\bclick\b\s(?:for|on)\s\w+")
_MEDIA_WORD = re.compile(rf"\b{_MEDIA_EXTENSIONS}(?:\simages?)?")
_PAGE_NUMBER = re.compile(r"\bpage\s+\d+\b")


def remove_shop_phrases(text: str) -> str:
    """Remove web-shop boilerplate: ``(worldwide) (free) shipping``, ``(free) download (free)``,
    ``click for/on <word>``, a bare format word (``png``, ``jpg image``, ``pdf images``…) and
    ``page <number>``.

    These match inside words too, as in the original (``downloads`` → ``s``).
    """
    for pattern in (_SHIPPING, _DOWNLOAD, _CLICK, _MEDIA_WORD, _PAGE_NUMBER):
        text = pattern.sub("", text)
    return text


_MIXED_CODE = re.compile(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b")  # j2d1a2a


def remove_mixed_codes(text: str) -> str:
    """Words alternating letters and digits at least twice (``j2d1a2a``) → a space."""
    return _MIXED_CODE.sub(" ", text)


# 'х' is Cyrillic: keyboards in the original's data set typed it for "by".
_DIMENSIONS = re.compile(r"\b\d+\.?\d*[x\u0445\u00d7]\d+\.?\d*\b")


def remove_dimensions(text: str) -> str:
    """Remove sizes such as ``1920x1080``, ``2.5×3`` or ``10х20`` (Cyrillic х)."""
    return _DIMENSIONS.sub("", text)


# -- 7. final spacing ----------------------------------------------------------------------------
_SPACED_COLON = re.compile(r"\b\s+:\s+")
_PUNCT_BEFORE_WORD = re.compile(r"(\D[,./])\b")
_WHITESPACE = re.compile(r"\s+")


def tidy_spacing(text: str) -> str:
    """``word : x`` → ``word: x``; a space after ``,``/``.``/``/`` glued to the next word
    (``red,blue`` → ``red, blue``, unless a digit precedes it, so ``3.5`` stays); whitespace runs
    → one space.
    """
    text = _SPACED_COLON.sub(": ", text)
    text = _PUNCT_BEFORE_WORD.sub(r"\1 ", text)
    return _WHITESPACE.sub(" ", text)


_WRAPPING_QUOTES = re.compile(r"^[\"'](.+)[\"']$", re.DOTALL)
_LEADING_JUNK = re.compile(r"^['_,\-:;]")
_TRAILING_JUNK = re.compile(r"['_,\-:+]$")
_DOT_WORD = re.compile(r"^\.\S+$")


def trim_edges(text: str) -> str:
    """Unwrap a caption quoted as a whole (``"a cat"`` → ``a cat``), drop one leading
    ``' _ , - : ;`` and one trailing ``' _ , - : +``, drop a caption that is only ``.something``
    (a dot-file name), then strip.
    """
    text = _WRAPPING_QUOTES.sub(r"\1", text)
    text = _LEADING_JUNK.sub("", text)
    text = _TRAILING_JUNK.sub("", text)
    text = _DOT_WORD.sub("", text)
    return text.strip()


RULES: tuple[Callable[[str], str], ...] = (
    decode_url_escapes,
    lowercase,
    unwrap_person_tag,
    remove_urls,
    strip_html,
    remove_handles,
    remove_cjk,
    normalize_dashes,
    normalize_quotes,
    remove_leftover_entities,
    remove_ip_addresses,
    remove_trailing_article_ids,
    replace_escaped_newlines,
    remove_hash_numbers,
    remove_long_numbers,
    remove_file_names,
    collapse_quotes_and_ellipses,
    replace_bad_punctuation,
    remove_lone_periods,
    split_slugs,
    fix_unicode,
    remove_product_codes,
    remove_shop_phrases,
    remove_mixed_codes,
    remove_dimensions,
    tidy_spacing,
    trim_edges,
)
"""Every rule, in the order one cleaning pass applies them."""


def clean_caption_once(text: str) -> str:
    """One pass of every rule in :data:`RULES`."""
    text = str(text)
    for rule in RULES:
        text = rule(text)
    return text


def clean_caption(text: str, passes: int = PASSES) -> str:
    """PixArt-α's caption cleaning: :func:`clean_caption_once` applied ``passes`` times (2)."""
    for _ in range(passes):
        text = clean_caption_once(text)
    return text
