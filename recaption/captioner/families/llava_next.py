"""LLaVA-NeXT / LLaVA-1.6 (``llava-next``): any-resolution tiles.

Each image is resized to the best of ``image_grid_pinpoints`` (a list of ``[height, width]``
canvases), cut into base-resolution tiles plus one downscaled overview, and every tile becomes
image tokens; the unpadded feature map adds a newline token per row. So the number of image tokens
differs per image (aspect ratio decides the canvas), and a batch of different shapes is padded.

Real checkpoints: ``llava-hf/llava-v1.6-mistral-7b-hf``, ``llava-hf/llava-v1.6-vicuna-7b-hf``.
No family options: the pinpoints are part of the model (its config holds the same list), so
changing them in the processor alone would make image tokens and features disagree. The vision
token budget is bounded by the largest pinpoint (672x672 or 1344x336: at most 5 tiles).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NAME = "llava-next"
MODEL_TYPES = ("llava_next",)
HUB_IDS = ("llava-hf/llava-v1.6-mistral-7b-hf", "llava-hf/llava-v1.6-vicuna-7b-hf")
OPTIONS: dict[str, str] = {}

TILE = 28  # the tiny model's base resolution (336 in the real ones)
# The real list scaled from 336 to 28: 1x2, 2x1, 2x2, 1x3, 3x1 tiles.
TINY_PINPOINTS = [[28, 56], [56, 28], [56, 56], [28, 84], [84, 28]]


def apply_options(processor: Any, options: dict[str, Any]) -> None:
    """No options for this family."""


def build_tiny(folder: str | Path, *, seed: int = 0) -> str:
    """A tiny random-weight LLaVA-NeXT (CLIP 28 px tiles, 2-layer Llama) saved to ``folder``."""
    import torch
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from recaption.captioner.families._tokenizer import save_tiny, tiny_llama_config
    from recaption.captioner.tiny import LLAVA_CHAT_TEMPLATE, build_tiny_tokenizer, tiny_clip_vision_config

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(model_max_length=4096)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TILE},
        crop_size={"height": TILE, "width": TILE},
        image_grid_pinpoints=TINY_PINPOINTS,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token (see docs/verified.md)
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config=tiny_clip_vision_config(TILE),
        text_config=tiny_llama_config(tokenizer),
        # the declared field (``image_token_id`` is its alias): the same config, and one mypy knows
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=TINY_PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    return save_tiny(out, model, processor, tokenizer)
