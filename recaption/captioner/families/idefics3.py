"""Idefics3 and SmolVLM (``idefics3``): SigLIP tiles of a fixed size, plus a global view.

The image is resized so its longest edge is ``size.longest_edge`` (rounded up to whole tiles of
``max_image_size.longest_edge``), split into a grid of tiles (``do_image_splitting``), and each
tile, plus the whole image shrunk to one tile, becomes ``image_seq_len`` tokens, wrapped in
``<fake_token_around_image>`` and ``<row_i_col_j>`` markers. The token count per image therefore
depends on its aspect ratio and on ``longest_edge``.

Real checkpoints: ``HuggingFaceTB/SmolVLM-Instruct`` (model type ``idefics3``),
``HuggingFaceM4/Idefics3-8B-Llama3``.

Family options (``caption.image_options`` / ``--image-option KEY=VALUE``):

- ``longest_edge``: resize target before splitting, a multiple of the tile size
  (``max_image_size.longest_edge``: 364 for Idefics3-8B, 384 for SmolVLM). Lower is fewer tiles,
  fewer tokens, faster captions; the checkpoints default to 4 tiles per side (1456 / 1536).
- ``do_image_splitting``: ``true`` (tiles + global view) or ``false`` (the global view only:
  one tile's worth of tokens per image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recaption.errors import ConfigError

NAME = "idefics3"
MODEL_TYPES = ("idefics3",)
HUB_IDS = ("HuggingFaceTB/SmolVLM-Instruct", "HuggingFaceM4/Idefics3-8B-Llama3")
OPTIONS: dict[str, str] = {
    "longest_edge": "an integer multiple of the tile size (max_image_size.longest_edge)",
    "do_image_splitting": "true or false",
}

TILE = 32  # the tiny model's tile (364/384 in the real ones)

# Idefics3's own template (HuggingFaceM4/Idefics3-8B-Llama3), as the checkpoint ships it.
CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _tile(image_processor: Any) -> int:
    mis = getattr(image_processor, "max_image_size", None)
    value = mis.get("longest_edge") if isinstance(mis, dict) else getattr(mis, "longest_edge", None)
    return int(value or 0)


def apply_options(processor: Any, options: dict[str, Any]) -> None:
    """Set ``size.longest_edge`` / ``do_image_splitting`` on the loaded image processor (validated)."""
    ip = processor.image_processor
    if "longest_edge" in options:
        value, tile = options["longest_edge"], _tile(ip)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (tile and value % tile):
            raise ConfigError(
                "image_options.longest_edge",
                value,
                f"a positive integer multiple of this model's tile size ({tile} px)",
            )
        ip.size = {"longest_edge": value}
    if "do_image_splitting" in options:
        value = options["do_image_splitting"]
        if not isinstance(value, bool):
            raise ConfigError("image_options.do_image_splitting", value, "true or false")
        ip.do_image_splitting = value


def build_tiny(folder: str | Path, *, seed: int = 0) -> str:
    """A tiny random-weight Idefics3 (SigLIP 32 px tiles, 2-layer Llama) saved to ``folder``."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
    )
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    from recaption.captioner.families._tokenizer import build_tokenizer, save_tiny, tiny_llama_config

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    grid = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tokenizer = build_tokenizer(
        special_tokens=[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|finetune_right_pad_id|>",
            "<end_of_utterance>",
            "<fake_token_around_image>",
            "<image>",
            "<global-img>",
            *grid,
        ],
        chat_template=CHAT_TEMPLATE,
        bos_token="<|begin_of_text|>",  # written by the chat template, as in the checkpoint
        eos_token="<end_of_utterance>",
        pad_token="<|finetune_right_pad_id|>",
    )
    scale_factor, patch = 2, 16
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 4 * TILE},
        max_image_size={"longest_edge": TILE},
        do_image_splitting=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(TILE // patch) ** 2 // scale_factor**2,
        chat_template=CHAT_TEMPLATE,
    )
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=TILE,
            patch_size=patch,
        ),
        text_config=tiny_llama_config(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    return save_tiny(out, model, processor, tokenizer)
