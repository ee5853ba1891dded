"""The pipeline file: caption → nouns → encode over one source into one output folder.

Validated with pydantic: an unknown key or a wrong type fails at once, naming the key and what is
accepted. Every field has a description (``recaption run --help-config`` prints them). The same
settings can be given as flags (``--set caption.model=...``).
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
)

from recaption.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Strict):
    path: str = Field(
        description="Images: a folder, file, glob or fsspec URL (any layout `recaption inspect` knows)."
    )
    kind: str = Field("auto", description="auto | sam | webdataset | parquet | folder.")
    shard_size: int | None = Field(
        None, description="Samples per input shard: loose files (default 1000), table rows (default 10000)."
    )
    captions_dir: str | None = Field(None, description="SAM: a folder of sa_<id>.txt raw captions.")
    text_column: str | None = Field(None, description="Tables: the raw caption column.")
    image_column: str | None = Field(None, description="Tables: the column of image bytes.")


class CaptionConfig(_Strict):
    enabled: bool = Field(True, description="Run the caption stage (off: OUTPUT/captions must exist).")
    model: str = Field(
        "llava-hf/llava-1.5-7b-hf", description="Hub id or local folder of a chat-template VLM."
    )
    revision: str | None = Field(None, description="Model revision.")
    prompt: str | list[str] = Field(
        "auto",
        description="sam | laion | a template with {raw_caption}; auto: laion where the source has raw "
        "captions, sam otherwise. A list of COLUMN=PROMPT writes one caption column per prompt.",
    )
    device: str = Field("auto", description="auto | cuda | cuda:N | cpu.")
    dtype: str = Field(
        "auto",
        description="auto (on GPU the checkpoint's own half dtype, bf16 for a float32 one; fp32 on CPU) | "
        "bfloat16 | float16 | float32.",
    )
    batch_size: int = Field(0, description="Images per generate call (0: from free GPU memory).")
    max_new_tokens: int = Field(
        512, description="Longest caption in tokens; captions that hit it are flagged."
    )
    min_new_tokens: int = Field(
        0, description="Benchmarks only: generate at least this many tokens per image."
    )
    sample: bool = Field(False, description="Seeded sampling (reproducible) instead of greedy decoding.")
    temperature: float = Field(0.2, description="Sampling temperature (PixArt used 0.2).")
    top_p: float = Field(1.0, description="Nucleus sampling threshold.")
    seed: int = Field(0, description="Seed of the per-sample sampling streams.")
    max_image_pixels: int | None = Field(
        1024 * 1024, description="Shrink larger images before preprocessing."
    )
    max_prompt_text_tokens: int = Field(
        192,
        ge=1,
        description="Text tokens a prompt may take beside its image (chat template, instruction, raw-caption "
        "hint); the worker's prompt limit, static cache and batch follow. Raise it for long non-Latin hints.",
    )
    compile: bool = Field(
        False, description="torch.compile generation on GPU (+8-10% measured, ~30 s warm-up)."
    )
    image_aspect: str = Field(
        "auto",
        description="auto | pad (to a square, LLaVA-1.5's own) | crop (LLaVA-1.5's processor; "
        "other families keep the whole image).",
    )
    stop_loops: bool = Field(True, description="End a caption whose tokens loop, not at max_new_tokens.")
    trust_remote_code: bool = Field(False, description="Allow the model repository's own code.")
    retry_flagged: int = Field(
        0,
        ge=0,
        description="Regenerate a caption that hit max_new_tokens or loops (seeded sampling), up to N times.",
    )
    retry_temperature: float = Field(0.7, gt=0, description="Sampling temperature of those retries.")
    image_options: dict[str, Any] = Field(
        {},
        description="Model-family image options: min_pixels/max_pixels (Qwen2-VL, Qwen2.5-VL), "
        "longest_edge/do_image_splitting (Idefics3, SmolVLM).",
    )
    workers: PositiveInt | None = Field(
        None, description="Caption workers (default: one per GPU, or per CPU slot)."
    )
    gpus_per_worker: float = Field(1.0, description="GPUs per caption worker (fractions share a GPU).")
    cpus_per_worker: float = Field(1.0, description="CPUs per caption worker (Ray resources).")


class NounsConfig(_Strict):
    enabled: bool = Field(True, description="Run the noun statistics stage.")
    columns: list[str] = Field(
        ["raw_caption", "dense_caption"], description="Caption columns compared side by side."
    )
    labels: list[str] | None = Field(None, description="A label per column (default: the column names).")
    threshold: float = Field(
        10, description="VN counts nouns appearing more than this many times (PixArt: 10)."
    )
    lemmatize: bool = Field(True, description="Count lemmas (dogs → dog).")
    lowercase: bool = Field(True, description="Lowercase nouns.")
    pos: str = Field("NOUN+PROPN", description="NOUN | NOUN+PROPN.")
    compounds: str = Field("off", description="off | join (adjacent nouns) | parser (dependency compounds).")
    min_length: int = Field(2, description="Shortest noun kept, in characters.")
    alpha_only: bool = Field(True, description="Keep only alphabetic nouns.")
    stop_list: str = Field("default", description="default | captions | none.")
    stop_file: str | None = Field(None, description="Extra stop words, one per line.")
    max_chars: int = Field(10_000, description="Longer captions are truncated there and flagged.")
    spacy_model: str = Field("en_core_web_sm", description="spaCy pipeline name or path.")
    workers: PositiveInt | None = Field(
        None, description="Noun workers (default: as many CPU slots as allowed)."
    )
    cpus_per_worker: float = Field(1.0, description="CPUs per noun worker (Ray resources).")


class EncodeConfig(_Strict):
    enabled: bool = Field(True, description="Run the T5/VAE encode stage.")
    preset: Literal["alpha", "sigma"] = Field(
        "alpha", description="alpha: T5 120 tokens, cleaned, SD VAE; sigma: 300, SDXL VAE."
    )
    fields: list[str] = Field(
        ["dense"], description="Captions to encode: dense, raw, or a caption column (e.g. short_caption)."
    )
    drop_flagged: list[Literal["length", "repetition", "fallback", "error"]] = Field(
        [], description="Leave out rows whose captions have these flags (each listed in the manifest)."
    )
    t5_model: str | None = Field(None, description="T5 hub id or folder (default: the preset's).")
    t5_hidden_size: int | None = Field(
        None, description="Expected T5 hidden size (default: the preset's, 4096)."
    )
    vae_model: str | None = Field(None, description="VAE hub id or folder (default: the preset's).")
    resolutions: list[int] | None = Field(None, description="Latent resolutions (default: 256, 512, 1024).")
    square: bool = Field(
        False,
        description="Also store the centre-crop square latents single-scale training reads "
        "(PixArt's InternalData / InternalDataSigma).",
    )
    vae_resize: Literal["crop", "stretch"] = Field(
        "crop",
        description="crop: cover the bucket, centre crop (PixArt's training transform); "
        "stretch: resize to the bucket (PixArt's extract_features.py --multi_scale).",
    )

    @field_validator("resolutions")
    @classmethod
    def _resolutions(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and not v:
            raise ValueError("at least one of 256, 512, 1024, 2048, 2880 (leave it out for the preset's)")
        return v

    device: str = Field("auto", description="auto | cuda | cuda:N | cpu.")
    store_dtype: Literal["float16", "bfloat16"] = Field("float16", description="Dtype of stored tensors.")
    batch_rows: int = Field(64, description="Samples per encode call and per parquet row group.")
    max_file_rows: PositiveInt | None = Field(
        None, description="Split a shard's features into files of at most this many rows."
    )
    max_file_size: ByteSize | None = Field(
        None, description="Split a shard's features into files of at most this size (e.g. 512MB, 2GiB)."
    )
    split_workers: bool = Field(False, description="T5 and VAE on different workers (two stages).")
    workers: PositiveInt | None = Field(
        None, description="Encode workers (default: one per GPU, or per CPU slot)."
    )
    gpus_per_worker: float = Field(1.0, description="GPUs per encode worker (fractions share a GPU).")
    cpus_per_worker: float = Field(1.0, description="CPUs per encode worker (Ray resources).")


class RayConfig(_Strict):
    address: str | None = Field(
        None, description="Join this cluster (default: RAY_ADDRESS, else Ray starts here)."
    )
    num_cpus: int | None = Field(None, description="CPUs of an embedded Ray (default: all).")
    max_retries: int = Field(3, description="Times a shard is redone after its worker died.")


class PipelineConfig(_Strict):
    source: SourceConfig
    output: str = Field(
        description="Output folder: captions/, nouns/, features/, pipeline.yaml, summary.json."
    )
    executor: Literal["auto", "ray", "local"] = Field(
        "auto",
        description="ray: stages overlap on actors; local: one after another here; auto: ray with "
        "a Ray address or more than one shard to do, else local (no Ray start for small jobs).",
    )
    ray: RayConfig = Field(default_factory=RayConfig)  # type: ignore[arg-type]
    caption: CaptionConfig = Field(default_factory=CaptionConfig)  # type: ignore[arg-type]
    nouns: NounsConfig = Field(default_factory=NounsConfig)  # type: ignore[arg-type]
    encode: EncodeConfig = Field(default_factory=EncodeConfig)  # type: ignore[arg-type]

    @field_validator("output")
    @classmethod
    def _output(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("an output folder is needed")
        return v


# Settings that change speed or placement, not results: a resumed run may change them.
NON_SEMANTIC = {
    # The folder itself: the same run may be resumed through another spelling of its path.
    "output",
    # Stages may be run in several goes into one folder (captions today, features tomorrow).
    "caption.enabled",
    "nouns.enabled",
    "encode.enabled",
    "executor",
    "ray",
    "caption.batch_size",
    "caption.compile",
    "caption.workers",
    "caption.gpus_per_worker",
    "caption.cpus_per_worker",
    "nouns.workers",
    "nouns.cpus_per_worker",
    "encode.batch_rows",
    # file layout only: finished shards keep theirs, the rest follow the new target
    "encode.max_file_rows",
    "encode.max_file_size",
    "encode.workers",
    "encode.gpus_per_worker",
    "encode.cpus_per_worker",
    "encode.split_workers",
}


def _accepted(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    cls: Any = model
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part)) if hasattr(cls, "model_fields") else None
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return []
        cls = field.annotation
    return sorted(cls.model_fields) if hasattr(cls, "model_fields") else []


def _explain(e: ValidationError) -> ConfigError:
    err = e.errors()[0]
    loc = tuple(err.get("loc", ()))
    key = ".".join(str(p) for p in loc) or "(top level)"
    if err.get("type") == "extra_forbidden":
        accepted = _accepted(PipelineConfig, loc)
        hint = f"unknown key {key!r}"
        close = difflib.get_close_matches(str(loc[-1]) if loc else "", accepted, n=1, cutoff=0.6)
        if close:
            hint += f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?"
        return ConfigError(key, err.get("input"), accepted, hint=hint)
    if err.get("type") == "missing":
        return ConfigError(key, None, "a value", hint=f"{key!r} is required")
    # pydantic says "Input should be 'auto', 'ray' or 'local'"; after "accepted:" the part it
    # names is what reads right ("accepted: 'auto', 'ray' or 'local'")
    msg = str(err.get("msg") or "a valid value")
    for lead in ("Input should be ", "Value error, "):
        if msg.startswith(lead):
            msg = msg[len(lead) :]
    return ConfigError(key, err.get("input"), msg)


def load_config(data: dict[str, Any]) -> PipelineConfig:
    """Validate a pipeline dict; the first problem becomes a :class:`ConfigError` naming the key."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise _explain(e) from None


def read_config(url: str) -> dict[str, Any]:
    """Read a YAML pipeline file (any fsspec URL)."""
    import yaml

    from recaption import io

    try:
        data = yaml.safe_load(io.read_text(url))
    except yaml.YAMLError as e:
        raise ConfigError("CONFIG", url, "a YAML pipeline file", hint=f"it does not parse: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("CONFIG", url, "a YAML mapping with source, output, caption, nouns, encode")
    return data


def apply_overrides(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """``["caption.model=x", "encode.resolutions=[256,512]"]`` → nested keys; values parse as YAML."""
    import yaml

    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in sets:
        if "=" not in item:
            raise ConfigError(
                "--set", item, "KEY=VALUE with a dotted key, e.g. caption.model=llava-hf/llava-1.5-7b-hf"
            )
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError("--set", item, "KEY=VALUE with a dotted key")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError("--set", item, f"{p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return out


def semantic(cfg: PipelineConfig) -> dict[str, Any]:
    """The settings that decide the results (for comparing a rerun with the first run)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value

    walk("", cfg.model_dump())
    # Paths compare by what they name: ``imgs``, ``imgs/`` and ``/abs/imgs`` are one folder.
    for key in PATH_SETTINGS:
        if isinstance(flat.get(key), str):
            flat[key] = _same_path(flat[key])
    return {k: v for k, v in flat.items() if k not in NON_SEMANTIC and k.split(".")[0] not in NON_SEMANTIC}


PATH_SETTINGS = ("source.path", "source.captions_dir", "nouns.stop_file")


def _same_path(url: str) -> str:
    from recaption import io

    try:
        return io.normalize(url).rstrip("/") or "/"
    except Exception:  # an unknown scheme: compare as written
        return url


def section_of(key: str) -> str:
    """The stage a setting belongs to: ``source.*`` decides the captions."""
    head = key.split(".", maxsplit=1)[0]
    return "caption" if head == "source" else head


def _yaml_value(value: Any) -> str:
    """A default as a pipeline file writes it: ``null``, ``true``, ``[256, 512]``, ``auto``."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def describe_fields() -> str:
    """Every key with its default and description (for --help-config), as valid YAML: the
    defaults as a pipeline file writes them (``null``, ``true``), required keys commented."""
    lines = []
    for section_name, field in PipelineConfig.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines.append(f"{section_name}:")
            for k, f in ann.model_fields.items():
                if f.is_required():
                    lines.append(f"  {k}:   # (required) {f.description}")
                else:
                    lines.append(f"  {k}: {_yaml_value(f.default)}  # {f.description}")
        elif field.is_required():
            lines.append(f"{section_name}:   # (required) {field.description}")
        else:
            lines.append(f"{section_name}: {_yaml_value(field.default)}  # {field.description}")
    return "\n".join(lines)
