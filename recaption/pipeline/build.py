"""From configuration sections to stages: the one place that does it.

``recaption run`` (a pipeline file) and the single-stage commands (``recaption caption``,
``nouns``, ``encode``) take the same settings: the sections of :mod:`recaption.pipeline.config`.
The commands fill a section from their flags (:func:`section_from_flags`) and both paths build
their stages here, so an option means the same thing, with the same default and the same checks,
whichever way it is given.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from recaption.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import BaseModel

    from recaption.captioner.model import CaptionerConfig
    from recaption.captioner.stage import CaptionStage
    from recaption.encoder.stage import EncodeStage
    from recaption.nouns.options import NounOptions
    from recaption.pipeline.config import CaptionConfig, EncodeConfig, NounsConfig
    from recaption.readers.base import Source

M = TypeVar("M", bound="BaseModel")


def section_from_flags(model: type[M], values: dict[str, Any], flags: dict[str, str] | None = None) -> M:
    """A configuration section from command-line values; a bad value fails naming its flag
    (``--batch-size``, not ``caption.batch_size``) and what it accepts."""
    from pydantic import ValidationError

    flags = flags or {}
    try:
        return model.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err.get("loc", ("?",))[0])
        flag = flags.get(name, "--" + name.replace("_", "-"))
        raise ConfigError(flag, err.get("input"), err.get("msg", "a valid value")) from None


def parse_key_values(flag: str, items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` flags as a mapping; values read as YAML scalars (``true``, ``1003520``, ``x``)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(flag, item, "KEY=VALUE (e.g. max_pixels=1003520)")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


@contextmanager
def in_section(section: str) -> Iterator[None]:
    """Name a model or stage check's failure by its pipeline key (``caption.dtype``, not ``dtype``)."""
    try:
        yield
    except ConfigError as e:
        option = e.option
        if not option.startswith(f"{section}."):
            option = f"{section}.{option.lstrip('-').replace('-', '_')}"
        raise ConfigError(option, *e._init_args[1:]) from None  # type: ignore[arg-type]


def check_model_path(option: str, value: str | None) -> None:
    """A model given as a path must exist: found now, not when a worker loads it after hours of
    captioning. Hub ids (``org/name``) are left to the loader (the driver may be offline)."""
    if not value:
        return
    from recaption import io

    looks_like_path = value.startswith(("/", ".", "~")) or "://" in value or value.count("/") >= 2
    if looks_like_path and not io.exists(value):
        raise ConfigError(
            option,
            value,
            "a Hugging Face hub id (org/name) or an existing local folder",
            hint="no such folder",
        )


def captioner_config(c: CaptionConfig) -> CaptionerConfig:
    """The captioner's model configuration of a ``caption`` section."""
    from recaption.captioner.model import CaptionerConfig

    check_model_path("model", c.model)
    return CaptionerConfig(
        model=c.model,
        revision=c.revision,
        dtype=c.dtype,
        device=c.device,
        batch_size=c.batch_size,
        max_new_tokens=c.max_new_tokens,
        min_new_tokens=c.min_new_tokens,
        do_sample=c.sample,
        temperature=c.temperature,
        top_p=c.top_p,
        seed=c.seed,
        max_image_pixels=c.max_image_pixels,
        max_prompt_text_tokens=c.max_prompt_text_tokens,
        compile=c.compile,
        image_aspect=c.image_aspect,
        stop_loops=c.stop_loops,
        gpu_share=min(1.0, c.gpus_per_worker) if c.gpus_per_worker > 0 else 1.0,
        trust_remote_code=c.trust_remote_code,
        image_options=dict(c.image_options),
    )


def caption_stage(c: CaptionConfig, source: Source) -> CaptionStage:
    """The caption stage of a ``caption`` section over an opened source."""
    from recaption.captioner.stage import CaptionStage

    return CaptionStage(
        source=source,
        model=captioner_config(c),
        prompt=c.prompt,
        retry_flagged=c.retry_flagged,
        retry_temperature=c.retry_temperature,
    )


def noun_options(n: NounsConfig) -> NounOptions:
    """The noun counter's options of a ``nouns`` section."""
    from recaption.nouns.options import NounOptions

    return NounOptions(
        lemmatize=n.lemmatize,
        lowercase=n.lowercase,
        pos=n.pos,
        compounds=n.compounds,
        min_length=n.min_length,
        alpha_only=n.alpha_only,
        stop_list=n.stop_list,
        stop_file=n.stop_file,
        max_chars=n.max_chars,
        model=n.spacy_model,
    )


def encode_stage(
    e: EncodeConfig,
    captions: str,
    *,
    what: str = "both",
    text_from: str | None = None,
    expected_shards: tuple[int, ...] | None = None,
) -> EncodeStage:
    """The encode stage of an ``encode`` section: T5 and the VAE (``what="both"``), T5 alone
    (``"text"``), or the VAE alone (``"image"``, reusing ``text_from``'s T5 features if given)."""
    from recaption.encoder.stage import EncodeStage, encode_configs

    if what not in ("both", "text", "image"):
        raise ConfigError("--what", what, ("both", "text", "image"))
    if what != "image":
        check_model_path("t5_model", e.t5_model)
    if what != "text":
        check_model_path("vae_model", e.vae_model)
    text, image = encode_configs(
        e.preset,
        t5_model=e.t5_model,
        vae_model=e.vae_model,
        resolutions=tuple(e.resolutions) if e.resolutions else None,
        device=e.device,
        t5_hidden_size=e.t5_hidden_size,
        store_dtype=e.store_dtype,
        square=e.square,
        vae_resize=e.vae_resize,
    )
    return EncodeStage(
        captions=captions,
        text=None if what == "image" else text,
        image=None if what == "text" else image,
        fields=tuple(e.fields),
        preset=e.preset,
        text_from=text_from,
        expected_shards=expected_shards,
        batch_rows=e.batch_rows,
        max_file_rows=e.max_file_rows,
        max_file_bytes=int(e.max_file_size) if e.max_file_size is not None else None,
        drop_flagged=tuple(e.drop_flagged),
    )
