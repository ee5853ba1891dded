"""Qwen2.5-VL (``qwen2.5-vl``): Qwen2-VL's dynamic resolution with a windowed-attention vision tower.

Same processor, chat template, image tokens and family options (``min_pixels``, ``max_pixels``)
as :mod:`recaption.captioner.families.qwen2_vl`; only the vision tower differs.

Real checkpoints: ``Qwen/Qwen2.5-VL-7B-Instruct``, ``Qwen/Qwen2.5-VL-3B-Instruct``.
"""

from __future__ import annotations

from pathlib import Path

from recaption.captioner.families.qwen2_vl import OPTIONS, apply_options, load_processor

NAME = "qwen2.5-vl"
MODEL_TYPES = ("qwen2_5_vl",)
HUB_IDS = ("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct")

__all__ = ["HUB_IDS", "MODEL_TYPES", "NAME", "OPTIONS", "apply_options", "build_tiny", "load_processor"]


def build_tiny(folder: str | Path, *, seed: int = 0) -> str:
    """A tiny random-weight Qwen2.5-VL (2 vision blocks, one windowed, one full) saved to ``folder``."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from recaption.captioner.families.qwen2_vl import save_tiny, special_ids, tiny_parts, tiny_text_config

    tokenizer, image_processor = tiny_parts()
    config = Qwen2_5_VLConfig(
        text_config=tiny_text_config(tokenizer),
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
        **special_ids(tokenizer),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return save_tiny(folder, model, tokenizer, image_processor, "Qwen2_5_VLProcessor")
