"""Every setting of the pipeline file reaches the stage it configures (none accepted and ignored)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from recaption.pipeline import build
from recaption.pipeline.config import CaptionConfig, EncodeConfig, NounsConfig
from tests.builders import image_bytes

# settings that place or enable stages rather than configure what a stage computes
PLACEMENT = {"enabled", "workers", "gpus_per_worker", "cpus_per_worker", "split_workers"}

CAPTION_VALUES: dict[str, Any] = {
    "model": "some/other-vlm",
    "revision": "abc123",
    "prompt": "laion",
    "device": "cpu",
    "dtype": "float32",
    "batch_size": 4,
    "max_new_tokens": 64,
    "min_new_tokens": 8,
    "sample": True,
    "temperature": 0.7,
    "top_p": 0.9,
    "seed": 7,
    "max_image_pixels": 512 * 512,
    "max_prompt_text_tokens": 400,
    "compile": True,
    "image_aspect": "crop",
    "stop_loops": False,
    "trust_remote_code": True,
    "image_options": {"max_pixels": 64 * 784},
    "retry_flagged": 2,
    "retry_temperature": 0.9,
}
NOUNS_VALUES: dict[str, Any] = {
    "lemmatize": False,
    "lowercase": False,
    "pos": "NOUN",
    "compounds": "join",
    "min_length": 3,
    "alpha_only": False,
    "stop_list": "none",
    "stop_file": "stop.txt",
    "max_chars": 500,
    "spacy_model": "en_core_web_md",
}
# used by the pipeline around the stage (which columns, their labels, the report's threshold)
NOUNS_AROUND = {"columns", "labels", "threshold"}
ENCODE_VALUES: dict[str, Any] = {
    "preset": "sigma",
    "fields": ["dense", "raw"],
    "t5_model": "t5-folder",
    "t5_hidden_size": 32,
    "vae_model": "vae-folder",
    "resolutions": [256],
    "square": True,
    "vae_resize": "stretch",
    "device": "cpu",
    "store_dtype": "bfloat16",
    "batch_rows": 8,
    "max_file_rows": 100,
    "max_file_size": "1GB",
    "drop_flagged": ["length"],
}


def _state(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _state(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    return obj


def test_the_lists_cover_every_setting():
    assert set(CaptionConfig.model_fields) - PLACEMENT == set(CAPTION_VALUES)
    assert set(NounsConfig.model_fields) - PLACEMENT - NOUNS_AROUND == set(NOUNS_VALUES)
    assert set(EncodeConfig.model_fields) - PLACEMENT == set(ENCODE_VALUES)


@pytest.mark.parametrize("key", sorted(CAPTION_VALUES))
def test_caption_setting_reaches_the_stage(key: str, tmp_path: Path):
    from recaption.readers import open_source

    (tmp_path / "a.jpg").write_bytes(image_bytes())
    src = open_source(str(tmp_path))
    base = build.caption_stage(CaptionConfig(), src)
    changed = build.caption_stage(CaptionConfig(**{key: CAPTION_VALUES[key]}), src)

    def state(st: Any) -> Any:
        return (_state(st.model), st.prompt, st.retry_flagged, st.retry_temperature)

    assert state(changed) != state(base)


@pytest.mark.parametrize("key", sorted(NOUNS_VALUES))
def test_nouns_setting_reaches_the_counter(key: str):
    base = build.noun_options(NounsConfig())
    changed = build.noun_options(NounsConfig(**{key: NOUNS_VALUES[key]}))
    assert _state(changed) != _state(base)


@pytest.mark.parametrize("key", sorted(ENCODE_VALUES))
def test_encode_setting_reaches_the_stage(key: str):
    def state(cfg: EncodeConfig) -> Any:
        s = build.encode_stage(cfg, "captions")
        return {k: _state(v) for k, v in vars(s).items() if not k.startswith("_")}

    assert state(EncodeConfig(**{key: ENCODE_VALUES[key]})) != state(EncodeConfig())
