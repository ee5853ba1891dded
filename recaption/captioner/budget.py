"""How long a vision-language prompt can get, and how many of them fit in accelerator memory.

A worker fixes one prompt-length limit when it loads (the worst case it accepts), sizes its static
KV cache from that limit plus ``max_new_tokens``, and computes its batch size from the *same*
number, so no later prompt can ask for a bigger cache than the budget counted.

The number of image tokens is computed from each family's published processor settings, never by
trying a few sizes:

- **fixed** (LLaVA-1.5 and other single-crop CLIP models): ``(crop / patch)²`` (+ the CLS token
  when the processor keeps it): 576 for LLaVA-1.5 at 336 px whatever the image.
- **anyres** (LLaVA-NeXT): the base crop plus the unpadded features of the best grid from
  ``image_grid_pinpoints`` and one newline token per feature row (transformers'
  ``LlavaNextProcessor._get_number_of_features``); up to ≈ 2,900 tokens at 1 MP.
- **qwen** (Qwen2-VL, Qwen2.5-VL): ``smart_resize`` to multiples of ``patch × merge`` (28 px)
  within ``min_pixels``/``max_pixels``, one token per 28 × 28 cell: ≈ 1,225–1,369 at 1 MP.
- **tiles** (Idefics3, SmolVLM): longest edge rescaled to ``size.longest_edge``, split into tiles
  of ``max_image_size.longest_edge``, ``image_seq_len`` tokens per tile plus the global image and
  the row/column markers.

The worst case is taken over aspect ratios from 1:4 to 4:1 at ``max_image_pixels`` (images are
shrunk to that before preprocessing) and at smaller areas (a smaller image can pick another grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

FAMILIES = ("fixed", "anyres", "qwen", "tiles")

# Without a pixel cap images are still bounded by decoding; this stands for "as large as it gets".
UNCAPPED_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class ImageTokenSettings:
    """The processor settings that decide how many tokens one image becomes."""

    family: str
    patch_size: int = 14
    crop_size: int = 336  # fixed / anyres: the base crop side
    extra_tokens: int = 0  # fixed / anyres: CLS kept ("full" feature strategy / additional tokens)
    grid_pinpoints: tuple[tuple[int, int], ...] = ()  # anyres: (height, width) pairs
    merge_size: int = 2  # qwen
    min_pixels: int = 56 * 56  # qwen
    max_pixels: int = 14 * 14 * 4 * 1280  # qwen
    longest_edge: int = 1456  # tiles: the whole image's longest edge before splitting
    tile_size: int = 364  # tiles
    tile_tokens: int = 169  # tiles: image_seq_len
    splitting: bool = True  # tiles: do_image_splitting


def _side(value: Any, *keys: str) -> int:
    """An int side out of an int, a dict or a SizeDict (``0`` if none of ``keys`` is set)."""
    if isinstance(value, int):
        return value
    for k in keys:
        v = value.get(k) if isinstance(value, dict) else getattr(value, k, None)
        if isinstance(v, int) and v > 0:
            return v
    return 0


def settings_from_processor(processor: Any) -> ImageTokenSettings | None:
    """Read the image-token settings of a transformers processor (``None``: not a known family)."""
    ip = getattr(processor, "image_processor", None)
    if ip is None:
        return None
    patch = int(getattr(processor, "patch_size", None) or getattr(ip, "patch_size", None) or 14)
    if (getattr(ip, "merge_size", None) and hasattr(ip, "min_pixels")) or _is_qwen(ip):
        size = getattr(ip, "size", None) or {}
        lo = getattr(ip, "min_pixels", None) or _side(size, "shortest_edge")
        hi = getattr(ip, "max_pixels", None) or _side(size, "longest_edge")
        return ImageTokenSettings(
            family="qwen",
            patch_size=int(getattr(ip, "patch_size", patch)),
            merge_size=int(ip.merge_size),
            min_pixels=int(lo),
            max_pixels=int(hi),
        )
    if hasattr(ip, "do_image_splitting") and getattr(ip, "max_image_size", None) is not None:
        return ImageTokenSettings(
            family="tiles",
            longest_edge=_side(ip.size, "longest_edge"),
            tile_size=_side(ip.max_image_size, "longest_edge"),
            tile_tokens=int(getattr(processor, "image_seq_len", 169)),
            splitting=bool(ip.do_image_splitting),
        )
    crop = _side(getattr(ip, "crop_size", None) or {}, "height", "shortest_edge") or _side(
        getattr(ip, "size", None) or {}, "shortest_edge", "height"
    )
    strategy = getattr(processor, "vision_feature_select_strategy", "default")
    extra = int(getattr(processor, "num_additional_image_tokens", 0) or 0)
    # "default" drops the CLS token again, so only "full" keeps the additional tokens.
    extra_kept = extra if strategy == "full" else 0
    pinpoints = getattr(ip, "image_grid_pinpoints", None)
    if pinpoints:
        return ImageTokenSettings(
            family="anyres",
            patch_size=patch,
            crop_size=crop,
            extra_tokens=extra_kept,
            grid_pinpoints=tuple((int(h), int(w)) for h, w in pinpoints),
        )
    if crop and patch:
        return ImageTokenSettings(family="fixed", patch_size=patch, crop_size=crop, extra_tokens=extra_kept)
    return None


def _is_qwen(ip: Any) -> bool:
    return type(ip).__name__.startswith(("Qwen2VL", "Qwen2_5_VL")) and hasattr(ip, "merge_size")


# ---------------------------------------------------------------- per family
def qwen_smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Qwen2-VL's ``smart_resize``: sides multiples of ``factor``, area within the pixel bounds."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _best_resolution(height: int, width: int, pinpoints: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """LLaVA-NeXT's ``select_best_resolution``: most effective pixels, then least waste."""
    best = pinpoints[0]
    best_eff, best_waste = 0, float("inf")
    for ph, pw in pinpoints:
        scale = min(pw / width, ph / height)
        eff = min(int(width * scale) * int(height * scale), width * height)
        waste = ph * pw - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (ph, pw), eff, waste
    return best


def _anyres_tokens(s: ImageTokenSettings, height: int, width: int) -> int:
    bh, bw = _best_resolution(height, width, s.grid_pinpoints)
    side = s.crop_size // s.patch_size
    cur_h, cur_w = side * (bh // s.crop_size), side * (bw // s.crop_size)
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        cur_h -= ((cur_h - new_h) // 2) * 2
    else:
        new_w = int(round(width * (cur_h / height), 7))
        cur_w -= ((cur_w - new_w) // 2) * 2
    return cur_h * cur_w + cur_h + side * side + s.extra_tokens


def _tiles_tokens(s: ImageTokenSettings, height: int, width: int) -> int:
    rows = cols = 0
    if s.splitting:
        # Idefics3: the longest edge goes to size.longest_edge (up or down), sides stay even.
        aspect = width / height
        if width >= height:
            w = s.longest_edge
            h = int(w / aspect)
        else:
            h = s.longest_edge
            w = int(h * aspect)
        h, w = max(1, h + h % 2), max(1, w + w % 2)
        rh = math.ceil(h / s.tile_size) * s.tile_size
        rw = math.ceil(w / s.tile_size) * s.tile_size
        if rh > s.tile_size or rw > s.tile_size:
            rows, cols = math.ceil(rh / s.tile_size), math.ceil(rw / s.tile_size)
    # The global image: its tokens and 3 markers; each tile: its tokens and 2 markers, each row a newline.
    # (A tokenizer that does not merge "\n\n" adds one more: counted by the caller's measured text part.)
    return s.tile_tokens + 3 + rows * (cols * (s.tile_tokens + 2) + 1)


def image_tokens(s: ImageTokenSettings, height: int, width: int) -> int:
    """Tokens one ``height × width`` image (as given to the processor) becomes."""
    if s.family == "fixed":
        side = s.crop_size // s.patch_size
        return side * side + s.extra_tokens
    if s.family == "anyres":
        return _anyres_tokens(s, height, width)
    if s.family == "qwen":
        factor = s.patch_size * s.merge_size
        h, w = qwen_smart_resize(height, width, factor, s.min_pixels, s.max_pixels)
        return (h // factor) * (w // factor)
    if s.family == "tiles":
        return _tiles_tokens(s, height, width)
    raise ValueError(f"unknown image-token family {s.family!r}; known: {', '.join(FAMILIES)}")


def candidate_sizes(max_image_pixels: int | None) -> list[tuple[int, int]]:
    """Image sizes ``(height, width)`` that bound the worst case under a pixel cap.

    Aspect ratios 1:4 to 4:1 in fine steps, at the cap and at 1/2, 1/4 and 1/16 of it.
    """
    cap = max_image_pixels or UNCAPPED_PIXELS
    sizes: set[tuple[int, int]] = set()
    for area in (cap, cap // 2, cap // 4, cap // 16):
        for i in range(-48, 49):
            ratio = 4 ** (i / 48)  # width / height
            h = max(1, int(math.sqrt(area / ratio)))
            w = max(1, int(area / h))
            sizes.add((h, w))
    return sorted(sizes)


def worst_case_image_tokens(s: ImageTokenSettings, max_image_pixels: int | None) -> int:
    """The most tokens any image under ``max_image_pixels`` becomes."""
    return max(image_tokens(s, h, w) for h, w in candidate_sizes(max_image_pixels))


# ---------------------------------------------------------------- memory
def share_of_free_memory(free_bytes: int, total_bytes: int, gpu_share: float) -> int:
    """Bytes this worker may use: free memory, but never more than its share of the whole card.

    Workers sharing a GPU (``gpus_per_worker`` < 1) each read the same free memory when they start;
    each takes its fraction of the card's total, less what is already used beyond the others' shares.
    """
    if not 0 < gpu_share <= 1:
        raise ValueError(f"gpu_share must be in (0, 1], got {gpu_share}")
    if gpu_share >= 1:
        return free_bytes
    return int(min(free_bytes, total_bytes * gpu_share))


def batch_for_memory(
    budget_bytes: float,
    kv_bytes_per_token: int,
    cache_len: int,
    prompt_tokens: int,
    hidden_size: int,
    intermediate_size: int,
    dtype_bytes: int,
    max_batch: int,
) -> int:
    """Sequences that fit: a static cache of ``cache_len`` slots each, plus prefill activations.

    ``cache_len`` is the worker's fixed static-cache length (the prompt limit plus ``max_new_tokens``,
    as allocated): the same number the cache uses, so a batch that fits the budget fits the card.
    """
    kv = kv_bytes_per_token * cache_len
    # Prefill activations: a few hidden-size and MLP-size tensors per prompt token.
    act = 4 * prompt_tokens * (hidden_size + intermediate_size) * dtype_bytes
    batch = int(budget_bytes // (kv + act)) if budget_bytes > 0 else 0
    if batch >= 16:
        batch -= batch % 8
    return max(1, min(max_batch, batch))


def round_cache_len(tokens: int, multiple: int = 64) -> int:
    """The static cache length allocated for ``tokens`` (rounded up, so shapes stay few)."""
    return -(-tokens // multiple) * multiple
