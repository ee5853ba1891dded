"""Dense captioning with vision-language models (LLaVA and other chat-template VLMs).

The model wrapper (:class:`Captioner`) takes PIL images and prompt texts and returns
:class:`CaptionResult` s; it knows nothing of shards or Ray. Importing this package is cheap:
torch and transformers are imported when a model is loaded.

- :mod:`.prompts` — PixArt's prompt presets and validated ``{raw_caption}`` templates;
- :mod:`.model` — :class:`CaptionerConfig`, :class:`Captioner`, :class:`CaptionResult`;
- :mod:`.repetition` — degenerate-repetition detection;
- :mod:`.sampling` — per-sample reproducible sampling (imports torch);
- :mod:`.tiny` — a tiny random-weight LLaVA for tests and dry runs.
"""

from __future__ import annotations

from recaption.captioner.model import (
    DEFAULT_MODEL,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    Captioner,
    CaptionerConfig,
    CaptionResult,
)
from recaption.captioner.prompts import PRESETS, PromptTemplate, RenderedPrompt, resolve_prompt
from recaption.captioner.repetition import RepetitionReport, detect_repetition, detect_text_repetition

__all__ = [
    "DEFAULT_MODEL",
    "FINISH_ERROR",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "PRESETS",
    "CaptionResult",
    "Captioner",
    "CaptionerConfig",
    "PromptTemplate",
    "RenderedPrompt",
    "RepetitionReport",
    "detect_repetition",
    "detect_text_repetition",
    "resolve_prompt",
]
