from __future__ import annotations

import pickle
from dataclasses import asdict

import pytest

from recaption.errors import ConfigError
from recaption.nouns import stoplists
from recaption.nouns.options import NounOptions


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pos", "VERB"),
        ("compounds", "maybe"),
        ("stop_list", "english"),
        ("ops", "cuda"),
        ("min_length", 0),
        ("max_chars", 10),
        ("batch_size", 0),
        ("batch_size", True),
        ("lemmatize", "yes"),
        ("model", ""),
        ("stop_file", ""),
    ],
)
def test_bad_option_fails_at_once_naming_it(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        NounOptions(**{field: value})  # type: ignore[arg-type]
    assert err.value.option == field
    assert field in str(err.value)


def test_bad_choice_lists_the_accepted_values() -> None:
    with pytest.raises(ConfigError, match=r"'NOUN'.*'NOUN\+PROPN'"):
        NounOptions(pos="NN")


def test_components_follow_the_options() -> None:
    default = NounOptions()
    assert default.needed_components() == ("tok2vec", "tagger", "attribute_ruler", "lemmatizer")
    assert {"parser", "ner"} <= set(default.excluded_components())
    no_lemma = NounOptions(lemmatize=False)
    assert "lemmatizer" not in no_lemma.needed_components()
    assert "lemmatizer" in no_lemma.excluded_components()
    parser = NounOptions(compounds="parser")
    assert "parser" in parser.needed_components()
    assert "parser" not in parser.excluded_components()
    assert "ner" in parser.excluded_components()
    # joining compounds with the tagger heuristic needs no parser
    assert "parser" in NounOptions(compounds="join").excluded_components()


def test_pos_tags() -> None:
    assert NounOptions(pos="NOUN").pos_tags == ("NOUN",)
    assert NounOptions().pos_tags == ("NOUN", "PROPN")


def test_options_pickle_and_rebuild_from_their_description() -> None:
    opts = NounOptions(lemmatize=False, pos="NOUN", compounds="join", min_length=3)
    assert pickle.loads(pickle.dumps(opts)) == opts
    described = opts.describe()
    assert NounOptions.from_dict(described) == opts
    assert set(asdict(opts)) <= set(described)
    assert described["stop_words"]["size"] == len(stoplists.NLTK_ENGLISH)
    assert described["components"] == list(opts.needed_components())


def test_fingerprint_ignores_batch_size_only() -> None:
    assert NounOptions(batch_size=8).fingerprint() == NounOptions(batch_size=512).fingerprint()
    assert NounOptions(lowercase=False).fingerprint() != NounOptions().fingerprint()
    assert "batch_size" not in NounOptions().fingerprint()


def test_stop_lists_and_stop_file(tmp_path) -> None:
    assert NounOptions(stop_list="none").stop_words() == frozenset()
    captions = NounOptions(stop_list="captions").stop_words()
    assert {"image", "background", "the"} <= captions
    assert "image" not in NounOptions().stop_words()
    path = tmp_path / "stop.txt"
    path.write_text("# my list\nWatermark\nlogo  # brand marks\n\n", encoding="utf-8")
    opts = NounOptions(stop_file=str(path))
    assert {"watermark", "logo"} <= opts.stop_words()
    assert opts.describe()["stop_words"]["size"] == len(stoplists.NLTK_ENGLISH) + 2
    # the stop file's content is part of the fingerprint: different words, different stats
    assert opts.fingerprint()["stop_words"]["digest"] != NounOptions().fingerprint()["stop_words"]["digest"]


def test_missing_stop_file_is_a_config_error(tmp_path) -> None:
    opts = NounOptions(stop_file=str(tmp_path / "nope.txt"))
    with pytest.raises(ConfigError, match="stop_file"):
        opts.stop_words()
