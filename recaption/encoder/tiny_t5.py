"""A tiny random-weight T5 encoder with a real, working T5-style tokenizer, built offline.

Tests (and ``benchmarks/t5_gpu.py --tiny``) need a model folder that ``AutoTokenizer`` and
``T5EncoderModel.from_pretrained`` load exactly as they load ``DeepFloyd/t5-v1_1-xxl``, without the
hub. :func:`build_tiny_t5` writes one in well under a second:

- the tokenizer is a Unigram model (the algorithm of T5's SentencePiece model) estimated from
  :data:`TRAINING_TEXT`, run by the ``tokenizers`` library inside transformers' ``T5Tokenizer``, so it
  has T5's layout: ``<pad>`` = 0, ``</s>`` = 1 (appended to every sequence), ``<unk>`` = 2, the
  ``▁`` word-start marker, no sentinel ``<extra_id_*>`` tokens;
- the model is ``T5EncoderModel`` with T5 v1.1's architecture (gated-GELU feed-forward, relative
  position buckets, RMS layer norms) at toy sizes, seeded, saved as
  safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["TRAINING_TEXT", "build_tiny_t5"]

TRAINING_TEXT = """\
A close-up photograph of a small orange cat sleeping on a blue wool blanket near a sunny window.
The image shows a busy city street at night, with cars, red tail lights and tall glass buildings.
A watercolor painting of a quiet lake surrounded by green pine trees and snowy mountains.
Two children in yellow raincoats are jumping into puddles on a cobblestone path in the rain.
A white ceramic mug of hot coffee sits on a wooden table next to an open notebook and a pen.
The photo depicts an old red-brick house with a black door, white windows and a garden of roses.
An aerial view of a sandy beach, turquoise water, a wooden pier and several small fishing boats.
A man wearing a gray suit and glasses is reading a newspaper on a bench in a park in autumn.
This digital illustration shows a futuristic robot with glowing eyes standing in a dark forest.
Fresh vegetables, including tomatoes, carrots, peppers and lettuce, are arranged in a basket.
A black and white portrait of an elderly woman with deep wrinkles and a warm, gentle smile.
The style of the image is minimalist, with soft pastel colors, clean lines and a lot of space.
A golden retriever dog is running across a field of tall grass with a tennis ball in its mouth.
Sunlight streams through the leaves of a large oak tree, casting long shadows on the ground.
A plate of spaghetti with tomato sauce, basil leaves and grated parmesan cheese on top.
Free shipping on all orders! Buy the new leather wallet, size 10x12 cm, item #12345 today.
"""
"""Built-in training text: caption-like sentences, plus some shop alt-text."""

_SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # T5's ids 0, 1, 2, in that order


def _train_vocab(vocab_size: int, max_piece: int = 6) -> list[tuple[str, float]]:
    """A Unigram vocabulary estimated from :data:`TRAINING_TEXT` (piece counts → log-probabilities).

    Sub-word candidates are every substring (up to ``max_piece`` characters) of every
    ``▁``-prefixed word, as SentencePiece seeds its Unigram model; the most useful ones (count ×
    length) are kept, plus every single character so nothing in the text is ``<unk>``. Each score
    is the piece's log relative frequency. Plain counting rather than ``tokenizers``'
    ``UnigramTrainer``: that trainer's EM iterates hash maps in a random order, so its scores and
    ids change from run to run, and the tests need the same files every time.
    """
    import math
    from collections import Counter

    counts: Counter[str] = Counter()
    for word in TRAINING_TEXT.split():
        piece_word = "▁" + word
        for i in range(len(piece_word)):
            for j in range(i + 1, min(len(piece_word), i + max_piece) + 1):
                counts[piece_word[i:j]] += 1
    singles = sorted(p for p in counts if len(p) == 1)
    longer = sorted(
        (p for p in counts if len(p) > 1 and counts[p] > 1), key=lambda p: (-counts[p] * len(p), p)
    )
    keep = singles + longer[: max(vocab_size - len(_SPECIAL_TOKENS) - len(singles), 0)]
    total = sum(counts[p] for p in keep)
    scored = sorted(
        ((p, round(math.log(counts[p] / total), 6)) for p in keep), key=lambda ps: (-ps[1], ps[0])
    )
    return [(tok, 0.0) for tok in _SPECIAL_TOKENS] + scored


def build_tiny_t5(
    folder: str | Path,
    *,
    d_model: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    d_kv: int = 8,
    d_ff: int = 64,
    vocab_size: int = 300,
    seed: int = 0,
) -> str:
    """Write a tiny T5 v1.1-style encoder and its tokenizer to ``folder``; return the folder path.

    The folder loads with ``AutoTokenizer.from_pretrained(folder)`` and
    ``T5EncoderModel.from_pretrained(folder)`` (weights in ``model.safetensors``), like a hub id.
    The same arguments always give the same files' contents (tokenizer and weights).
    """
    import torch
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = T5Tokenizer(vocab=_train_vocab(vocab_size), extra_ids=0, model_max_length=512)
    tokenizer.save_pretrained(str(out))

    settings: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",  # T5 v1.1
        tie_word_embeddings=False,  # as v1.1's config says (decoder-side only; the encoder ignores it)
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    config = T5Config(**settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(config).eval()
    model.save_pretrained(str(out), safe_serialization=True)
    return str(out)
