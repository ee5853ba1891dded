"""Qwen2-VL (``qwen2-vl``): dynamic resolution, a vision token budget in pixels.

Each image is resized (aspect ratio kept) to whole multiples of 28 px with its area between
``min_pixels`` and ``max_pixels``, cut into 14 px patches, and every 2x2 patch group becomes one
image token: a 1024x768 photo is 1,014 tokens, a 224x224 one 64. ``image_grid_thw`` (time,
height and width in patches) goes to the model for its multimodal rotary positions.

Real checkpoints: ``Qwen/Qwen2-VL-7B-Instruct``, ``Qwen/Qwen2-VL-2B-Instruct``.

Family options (``caption.image_options`` / ``--image-option KEY=VALUE``), both in pixels and
multiples of 784 (28x28, one image token):

- ``min_pixels``: smallest area an image is enlarged to (checkpoint default 3,136 = 56x56);
- ``max_pixels``: the vision token budget per image (checkpoint default 12,845,056, i.e. up to
  16,384 tokens). 1,003,520 (1,280 tokens) is Qwen's own recommendation for captioning.

Without torchvision, transformers 5 cannot build ``Qwen2VLProcessor`` at all (its *video*
processor is torchvision-only). Captioning needs images only, so :func:`load_processor` then
uses :class:`ImageOnlyProcessor`: the checkpoint's own image processor and tokenizer, and the
same token expansion as ``Qwen2VLProcessor`` (one ``<|image_pad|>`` per merged patch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

from recaption.errors import ConfigError

NAME = "qwen2-vl"
MODEL_TYPES = ("qwen2_vl",)
HUB_IDS = ("Qwen/Qwen2-VL-7B-Instruct", "Qwen/Qwen2-VL-2B-Instruct")
OPTIONS: dict[str, str] = {
    "min_pixels": "an integer multiple of 784 (28x28 px, one image token), at least 3136",
    "max_pixels": "an integer multiple of 784 (28x28 px, one image token), at least min_pixels",
}
TOKEN_PIXELS = 28 * 28

# Qwen2-VL's chat template for the single-turn, image-first messages the captioner sends
# (the checkpoint's adds the default system prompt the same way).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def apply_options(processor: Any, options: dict[str, Any]) -> None:
    """Set the vision token budget (``min_pixels`` / ``max_pixels``) on the loaded image processor."""
    ip = processor.image_processor
    size = dict(getattr(ip, "size", None) or {})
    lo = options.get("min_pixels", size.get("shortest_edge"))
    hi = options.get("max_pixels", size.get("longest_edge"))
    for key, value in (("min_pixels", lo), ("max_pixels", hi)):
        if key not in options:
            continue
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < 4 * TOKEN_PIXELS
            or value % TOKEN_PIXELS
        ):
            raise ConfigError(f"image_options.{key}", value, OPTIONS[key])
    if lo is None or hi is None:  # a checkpoint's processor may set one bound only
        key, edge = ("min_pixels", "shortest_edge") if lo is None else ("max_pixels", "longest_edge")
        raise ConfigError(
            f"image_options.{key}",
            None,
            OPTIONS[key],
            hint=f"the checkpoint's image processor sets no {edge}: give image_options.{key} too",
        )
    if hi < lo:
        raise ConfigError("image_options.max_pixels", hi, f"an integer >= min_pixels ({lo})")
    ip.size = {"shortest_edge": int(lo), "longest_edge": int(hi)}


class ImageOnlyProcessor:
    """``Qwen2VLProcessor`` for images alone: what the captioner calls, without a video processor.

    ``processor(images=..., text=..., return_tensors="pt", padding=True)`` expands each
    ``<|image_pad|>`` to ``grid_t * grid_h * grid_w / merge_size**2`` copies (the processor's own
    rule) and returns ``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``pixel_values``
    and ``image_grid_thw``.
    """

    image_token = "<|image_pad|>"

    def __init__(self, image_processor: Any, tokenizer: Any, chat_template: str | None) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, **kwargs)

    def __call__(self, images: list[Any], text: list[str], **kwargs: Any) -> Any:
        from transformers import BatchFeature

        return_tensors = kwargs.pop("return_tensors", None)
        image_inputs = self.image_processor(images=images, return_tensors=return_tensors)
        grids = image_inputs["image_grid_thw"]
        merge = self.image_processor.merge_size**2
        expanded, i = [], 0
        for t in text:
            parts = t.split(self.image_token)
            out = parts[0]
            for part in parts[1:]:
                out += "<|placeholder|>" * int(grids[i].prod() // merge) + part
                i += 1
            expanded.append(out.replace("<|placeholder|>", self.image_token))
        if i != len(grids):
            raise ValueError(f"{len(grids)} images but {i} {self.image_token} tokens in the text")
        text_inputs = self.tokenizer(expanded, return_tensors=return_tensors, **kwargs)
        ids = text_inputs["input_ids"]
        text_inputs["mm_token_type_ids"] = (
            (ids == self.image_token_id).long()
            if return_tensors == "pt"
            else [[int(x == self.image_token_id) for x in row] for row in ids]
        )
        return BatchFeature(data={**text_inputs, **image_inputs})


def load_processor(source: str, **common: Any) -> Any:
    """``AutoProcessor``, or :class:`ImageOnlyProcessor` where the video processor cannot be built."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(source, **common)
    except (AttributeError, ImportError, ValueError, TypeError):
        # transformers raises one of these when torchvision (for the video processor) is missing.
        pass
    image_processor = AutoImageProcessor.from_pretrained(source, backend="pil", **common)
    tokenizer = AutoTokenizer.from_pretrained(source, **common)
    return ImageOnlyProcessor(image_processor, tokenizer, _chat_template(source, **common))


def _chat_template(source: str, **common: Any) -> str | None:
    """The processor's chat template file (``chat_template.jinja`` or ``.json``), else the tokenizer's."""
    import json

    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            path = cached_file(source, name, _raise_exceptions_for_missing_entries=False, **common)
        except OSError:
            path = None
        if path:
            text = Path(path).read_text(encoding="utf-8")
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


def save_processor(folder: Path, image_processor: Any, tokenizer: Any, processor_class: str) -> None:
    """Write the files a Qwen checkpoint ships (image processor, tokenizer, chat template), so that
    ``AutoProcessor`` builds ``processor_class`` where torchvision is present."""
    import json

    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    path = folder / "preprocessor_config.json"
    data = json.loads(path.read_text())
    data["processor_class"] = processor_class
    data["image_processor_type"] = "Qwen2VLImageProcessor"
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")


def tiny_parts() -> tuple[Any, Any]:
    """The tiny tokenizer and image processor shared by Qwen2-VL and Qwen2.5-VL."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from recaption.captioner.families._tokenizer import build_tokenizer

    tokenizer = build_tokenizer(
        special_tokens=SPECIAL_TOKENS,
        chat_template=CHAT_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    # The real defaults scaled down: at least 2x2 tokens, at most 8x8 tokens per image.
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=4 * TOKEN_PIXELS,
        max_pixels=64 * TOKEN_PIXELS,
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return tokenizer, image_processor


def tiny_text_config(tokenizer: Any) -> dict[str, Any]:
    """A 2-layer Qwen2 text config with multimodal rotary sections (head dim 32: 4+6+6 = 16 pairs)."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0},
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


class SpecialIds(TypedDict):
    """The vision token ids of a Qwen2-VL / Qwen2.5-VL config, as its keyword arguments."""

    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int


def special_ids(tokenizer: Any) -> SpecialIds:
    """The vision token ids in ``tokenizer`` (built by :func:`tiny_parts`)."""
    t = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": t("<|image_pad|>"),
        "video_token_id": t("<|video_pad|>"),
        "vision_start_token_id": t("<|vision_start|>"),
        "vision_end_token_id": t("<|vision_end|>"),
    }


def save_tiny(
    folder: str | Path, model: Any, tokenizer: Any, image_processor: Any, processor_class: str
) -> str:
    from transformers import GenerationConfig

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    save_processor(out, image_processor, tokenizer, processor_class)
    return str(out)


def build_tiny(folder: str | Path, *, seed: int = 0) -> str:
    """A tiny random-weight Qwen2-VL (2-block vision tower, 2-layer Qwen2) saved to ``folder``."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tokenizer, image_processor = tiny_parts()
    config = Qwen2VLConfig(
        text_config=tiny_text_config(tokenizer),
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        **special_ids(tokenizer),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    return save_tiny(folder, model, tokenizer, image_processor, "Qwen2VLProcessor")
