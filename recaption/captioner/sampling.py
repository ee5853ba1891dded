"""Sampling that is reproducible per sample, whatever the batch it lands in.

``transformers`` samples a whole batch with one ``torch.multinomial`` call on the global RNG, so a
sample's caption depends on its batch-mates, the batch size and the device. Here each row has
its own seed (derived from the run's seed and the sample's key) and sampling is done with the
Gumbel-max trick: ``argmax(logits / T + g)`` where ``g`` is Gumbel noise computed by a counter-based
hash of ``(row seed, step, token id)``. That is an exact draw from ``softmax(logits / T)``, the
noise is the same on CPU and GPU, and greedy ``generate`` then picks it — so rerunning a sample
with the same seed gives the same caption, in any batch (up to the floating-point differences
of the logits themselves).

Imported only where generation happens: it imports torch and transformers at module level.
"""

from __future__ import annotations

import hashlib

import torch
from transformers import LogitsProcessor

_MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """A 64-bit constant as a signed int64, so torch accepts it (multiplication wraps modulo 2**64)."""
    c &= _MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


_C1 = _signed(0xBF58476D1CE4E5B9)
_C2 = _signed(0x94D049BB133111EB)
_GOLDEN = _signed(0x9E3779B97F4A7C15)


def _lsr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors."""
    x = x ^ _lsr(x, 30)
    x = x * _C1
    x = x ^ _lsr(x, 27)
    x = x * _C2
    return x ^ _lsr(x, 31)


def row_seed(seed: int, key: str) -> int:
    """A 62-bit seed for one sample, from the run's seed and the sample's key."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 62) - 1)


def gumbel_noise(seeds: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise of shape ``(len(seeds), vocab)``, a pure function of (seed, step, token)."""
    base = _mix(seeds.to(torch.int64) * _GOLDEN + step)  # (B,)
    tokens = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    x = _mix(base[:, None] + tokens[None, :] * _GOLDEN)
    u = (_lsr(x, 40).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # 24 random bits, strictly inside (0, 1)
    return -torch.log(-torch.log(u))


class SeededSampler(LogitsProcessor):
    """Turns greedy decoding into per-row seeded sampling (temperature, top-k, top-p).

    Add it last to ``generate``'s ``logits_processor`` with ``do_sample=False``; the built-in
    processors (minimum length, ...) run before it, so a token they forbid (score ``-inf``) stays
    forbidden.
    """

    def __init__(
        self,
        seeds: list[int],
        prompt_length: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
    ) -> None:
        self.seeds = torch.tensor(seeds, dtype=torch.int64)
        self.prompt_length = prompt_length
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = int(input_ids.shape[1]) - self.prompt_length
        logits = scores.float() / self.temperature
        vocab = logits.shape[-1]
        if 0 < self.top_k < vocab:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            # Drop a token when the tokens before it already reach top_p; the first always stays.
            drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= self.top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        seeds = self.seeds.to(logits.device)
        return logits + gumbel_noise(seeds, step, vocab)  # type: ignore[return-value]
