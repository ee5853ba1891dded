"""Messages a newcomer reads: a mistyped setting gets "did you mean", --help-config is YAML."""

from __future__ import annotations

import re

import pytest
import yaml
from typer.testing import CliRunner

from recaption.cli import app
from recaption.errors import ConfigError
from recaption.pipeline.config import PipelineConfig, apply_overrides, load_config

BASE = {"source": {"path": "imgs"}, "output": "out"}


def test_mistyped_key_gets_did_you_mean():
    r = CliRunner().invoke(app, ["run", "--source", "x", "--output", "y", "--set", "caption.batchsize=4"])
    assert r.exit_code == 2
    assert "unknown key 'caption.batchsize'; did you mean 'caption.batch_size'?" in r.output
    for override, suggestion in (
        ("captoin.model=m", "'captoin'; did you mean 'caption'?"),
        ("encode.resolution=[256]", "did you mean 'encode.resolutions'?"),
        ("nouns.treshold=5", "did you mean 'nouns.threshold'?"),
    ):
        with pytest.raises(ConfigError, match=re.escape(suggestion)):
            load_config(apply_overrides(BASE, [override]))
    # nothing close: no guess, the accepted keys are listed as before
    with pytest.raises(ConfigError, match="'batch_size'") as info:
        load_config(apply_overrides(BASE, ["caption.zzzz=1"]))
    assert "did you mean" not in str(info.value)


def test_help_config_is_yaml_with_the_defaults():
    r = CliRunner().invoke(app, ["run", "--help-config"])
    assert r.exit_code == 0
    assert "None" not in r.output and "True" not in r.output and "False" not in r.output
    assert "  revision: null  #" in r.output
    assert "  lemmatize: true  #" in r.output
    parsed = yaml.safe_load(r.output)
    # every default reads back as the value the configuration has
    defaults = PipelineConfig.model_validate(BASE).model_dump(mode="json")
    for section in ("caption", "nouns", "encode", "ray"):
        for key, value in parsed[section].items():
            assert value == defaults[section][key], (section, key)
    assert parsed["executor"] == defaults["executor"]


def test_a_wrong_value_says_what_is_accepted_not_pydantics_sentence():
    """``--executor foo`` on ``run`` said "accepted: Input should be 'auto', 'ray' or 'local'" (and
    ``caption.max_new_tokens=abc``, "accepted: Input should be a valid integer, ..."): pydantic's
    sentence pasted after "accepted:"; ``caption --executor foo`` says "accepted: 'auto', 'ray', 'local'"."""
    r = CliRunner().invoke(app, ["run", "--source", "x", "--output", "y", "--executor", "foo"])
    assert r.exit_code == 2
    line = r.output.strip()
    assert "\n" not in line and "Input should" not in line, line
    assert "invalid value for executor: 'foo'; accepted: 'auto', 'ray' or 'local'" in line
    with pytest.raises(ConfigError) as info:
        load_config(apply_overrides(BASE, ["caption.max_new_tokens=abc"]))
    expected = "invalid value for caption.max_new_tokens: 'abc'; accepted: a valid integer"
    assert str(info.value).startswith(expected)
    assert "Input should" not in str(info.value)
