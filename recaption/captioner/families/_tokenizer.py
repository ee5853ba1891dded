"""A tiny byte-level BPE tokenizer for any family: its special tokens and chat template given.

Trained here in well under a second with ``tokenizers`` on a small built-in corpus, so the tiny
models need no data files; deterministic for the same arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The words captions and prompts use, so the tokenizer's merges look like a real one's.
CORPUS = [
    "Describe this image and its style in a very detailed manner.",
    "Give the caption of this image, describe this image and its style in a very detailed manner.",
    "The image shows a red car parked on a quiet street next to a tall brick building.",
    "A close-up photograph of a cat sitting on a wooden table near a window with soft light.",
    "In the background there are green trees, a blue sky with white clouds and distant mountains.",
    "The style of the image is realistic, with warm colors, sharp details and a shallow depth of field.",
    "Two people are walking along a sandy beach at sunset while waves roll onto the shore.",
    "A painting of a small village with houses, a church tower, a river and a stone bridge.",
    "The overall mood of the scene is calm and peaceful; the composition is balanced.",
    "There is text on the sign that reads 'open' in bold black letters on a yellow background.",
]


def build_tokenizer(
    *,
    special_tokens: Sequence[str],
    chat_template: str,
    eos_token: str,
    pad_token: str,
    unk_token: str | None = None,
    bos_token: str | None = None,
    add_bos: bool = False,
    extra_special_tokens: dict[str, str] | None = None,
    vocab_size: int = 512,
    model_max_length: int = 4096,
) -> Any:
    """A ``PreTrainedTokenizerFast`` whose first ids are ``special_tokens`` (in order), left-padded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=unk_token))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    if add_bos:
        assert bos_token is not None
        bos_id = tok.token_to_id(bos_token)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A",
            pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, bos_id)],
        )
    kwargs: dict[str, Any] = {}
    if unk_token:
        kwargs["unk_token"] = unk_token
    if bos_token:
        kwargs["bos_token"] = bos_token
    if extra_special_tokens:
        kwargs["extra_special_tokens"] = extra_special_tokens
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos_token,
        pad_token=pad_token,
        model_max_length=model_max_length,
        padding_side="left",
        chat_template=chat_template,
        **kwargs,
    )


def tiny_llama_config(tokenizer: Any, hidden_size: int = 64, max_position_embeddings: int = 4096) -> Any:
    """A 2-layer Llama text config sized to ``tokenizer`` (the language model of most tiny VLMs)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def save_tiny(folder: Any, model: Any, processor: Any, tokenizer: Any) -> str:
    """Give ``model`` a generation config from ``tokenizer``'s special ids and save it with its processor."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)
