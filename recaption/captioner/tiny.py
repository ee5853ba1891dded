"""A tiny random-weight LLaVA, built offline and saved like a hub checkpoint.

(The other families' tiny models live in :mod:`recaption.captioner.families`, one module each.)

Tests (and the ``--tiny`` mode of the benchmarks) use it to run the whole real loading path —
``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained(folder)`` — through batched
generation, without downloading anything. The parts match what LLaVA-1.5 ships:

- a byte-level BPE tokenizer (trained here in well under a second with ``tokenizers``) with the
  special tokens ``<unk> <s> </s> <pad> <image>`` and a Jinja chat template in LLaVA-1.5's
  ``USER: <image>\\n... ASSISTANT:`` format;
- a ``CLIPImageProcessor`` (shortest edge resize + centre crop, CLIP normalisation) at 28 px;
- ``LlavaProcessor(patch_size=14, vision_feature_select_strategy="default",
  num_additional_image_tokens=1)``: the CLS token counts, so 28 px / 14 px = 4 image tokens;
- a 2-layer CLIP vision tower and a 2-layer Llama, weights drawn from a fixed seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# LLaVA-1.5's own template (llava-hf/llava-1.5-7b-hf) renders "USER: <image>\n{text} ASSISTANT:".
# This one renders the same for the single-turn, image-first messages the captioner sends.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}"
    "{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}"
    "{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")


def build_tiny_tokenizer(vocab_size: int = 512, model_max_length: int = 2048):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer with LLaVA's special tokens and chat template (deterministic)."""
    from recaption.captioner.families._tokenizer import build_tokenizer

    # Llama's tokenizer starts every sequence with <s>; so does this one.
    return build_tokenizer(
        special_tokens=SPECIAL_TOKENS,
        chat_template=LLAVA_CHAT_TEMPLATE,
        unk_token="<unk>",
        bos_token="<s>",
        add_bos=True,
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        vocab_size=vocab_size,
        model_max_length=model_max_length,
    )


def tiny_clip_vision_config(image_size: int = 28) -> Any:
    """The 2-layer CLIP vision tower (14 px patches) of the tiny LLaVA-1.5 and LLaVA-NeXT."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=14,
        projection_dim=32,
    )


def build_tiny_llava(
    folder: str | Path,
    *,
    seed: int = 0,
    image_size: int = 28,
    hidden_size: int = 64,
    vocab_size: int = 512,
) -> str:
    """Build a tiny random-weight LLaVA with a working processor and save it to ``folder``.

    Returns the folder as a string, ready for ``from_pretrained`` (or for
    :class:`recaption.captioner.CaptionerConfig`'s ``model``). Deterministic for a given ``seed``;
    takes well under 5 s on one core.
    """
    import torch
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from recaption.captioner.families._tokenizer import save_tiny, tiny_llama_config

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(vocab_size=vocab_size)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_resize=True,
        do_normalize=True,
        do_rescale=True,
        do_convert_rgb=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=tiny_clip_vision_config(image_size),
        text_config=tiny_llama_config(tokenizer, hidden_size, max_position_embeddings=2048),
        image_token_index=image_token_id,  # the declared field; ``image_token_id`` is its alias
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    return save_tiny(out, model, processor, tokenizer)


def build_tiny_text_llama(folder: str | Path, *, seed: int = 0) -> str:
    """A tiny text-only Llama with a tokenizer, saved to ``folder``: a model that is *not* a VLM."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
