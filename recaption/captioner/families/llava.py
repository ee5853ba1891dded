"""LLaVA-1.5 (``llava``): a CLIP vision tower at one fixed resolution, 576 image tokens at 336 px.

Real checkpoints: ``llava-hf/llava-1.5-7b-hf``, ``llava-hf/llava-1.5-13b-hf``. No family options:
every image becomes the same number of tokens (shortest edge resized, centre crop).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NAME = "llava"
MODEL_TYPES = ("llava",)
HUB_IDS = ("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf")
OPTIONS: dict[str, str] = {}


def apply_options(processor: Any, options: dict[str, Any]) -> None:
    """No options for this family (checked by :func:`recaption.captioner.families.check_options`)."""


def build_tiny(folder: str | Path, *, seed: int = 0) -> str:
    """The tiny LLaVA-1.5 of :func:`recaption.captioner.tiny.build_tiny_llava`."""
    from recaption.captioner.tiny import build_tiny_llava

    return build_tiny_llava(folder, seed=seed)
