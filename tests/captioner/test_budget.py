"""Prompt-length worst cases per model family, checked against transformers' own processors.

The processors are built here from the settings the checkpoints publish (their preprocessor
configs), no download: LLaVA-1.5 (llava-hf/llava-1.5-7b-hf), LLaVA-NeXT
(llava-hf/llava-v1.6-mistral-7b-hf), Qwen2-VL (Qwen/Qwen2-VL-7B-Instruct) and Idefics3
(HuggingFaceM4/Idefics3-8B-Llama3).
"""

from __future__ import annotations

import pytest

from recaption.captioner.budget import (
    batch_for_memory,
    candidate_sizes,
    image_tokens,
    settings_from_processor,
    share_of_free_memory,
    worst_case_image_tokens,
)

MP = 1024 * 1024
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@pytest.fixture(scope="module")
def tokenizer():
    from recaption.captioner.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


def _llava15(tokenizer):
    from transformers import CLIPImageProcessor, LlavaProcessor

    ip = CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_mean=CLIP_MEAN
    )
    return LlavaProcessor(
        image_processor=ip,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def _llava_next(tokenizer):
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    ip = LlavaNextImageProcessor(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return LlavaNextProcessor(
        image_processor=ip,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


class _Holder:
    """A processor stand-in holding only an image processor (the token count needs no tokenizer)."""

    def __init__(self, ip, **attrs):
        self.image_processor = ip
        self.__dict__.update(attrs)


def _qwen2_vl():
    from transformers import Qwen2VLImageProcessor

    return _Holder(
        Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 16384, patch_size=14, merge_size=2)
    )


def _idefics3():
    from transformers import Idefics3ImageProcessor

    ip = Idefics3ImageProcessor(
        do_image_splitting=True, max_image_size={"longest_edge": 364}, size={"longest_edge": 4 * 364}
    )
    return _Holder(ip, image_seq_len=169)


def test_llava15_is_576_tokens_whatever_the_image(tokenizer):
    proc = _llava15(tokenizer)
    s = settings_from_processor(proc)
    assert s is not None and s.family == "fixed"
    for h, w in [(336, 336), (100, 1000), (1024, 1024)]:
        assert image_tokens(s, h, w) == 576
        assert proc._get_num_multimodal_tokens([[h, w]]).num_image_tokens == [576]
    assert worst_case_image_tokens(s, MP) == 576


def test_llava_next_matches_the_processor_and_exceeds_the_old_estimate(tokenizer):
    proc = _llava_next(tokenizer)
    s = settings_from_processor(proc)
    assert s is not None and s.family == "anyres"
    sizes = candidate_sizes(MP)

    def theirs(h: int, w: int) -> int:
        return proc._get_num_multimodal_tokens(image_sizes=[[h, w]]).num_image_tokens[0]

    for h, w in sizes[::5]:
        assert image_tokens(s, h, w) == theirs(h, w), (h, w)
    worst = worst_case_image_tokens(s, MP)
    assert worst == max(theirs(h, w) for h, w in sizes)
    assert image_tokens(s, 1024, 1024) == theirs(1024, 1024)
    # the old estimate tried 336x336, 336x672 and 672x336 only
    old = max(theirs(h, w) for h, w in [(336, 336), (336, 672), (672, 336)])
    assert worst > old + 900
    assert 2800 <= worst <= 3000


def test_qwen2_vl_from_min_and_max_pixels():
    proc = _qwen2_vl()
    s = settings_from_processor(proc)
    assert s is not None and s.family == "qwen"
    sizes = candidate_sizes(MP)
    for h, w in sizes[::5]:
        assert image_tokens(s, h, w) == proc.image_processor.get_number_of_image_patches(h, w) // 4, (h, w)
    worst = worst_case_image_tokens(s, MP)
    assert 1225 <= worst <= 1369 + 40  # the 1 MP cap, rounded to 28 px cells
    assert worst_case_image_tokens(s, 256 * 256) < 100  # the cap decides, not a fixed guess


def test_idefics3_tiles_from_its_splitting_settings():
    from transformers.models.idefics3.processing_idefics3 import Idefics3Processor

    proc = _idefics3()
    s = settings_from_processor(proc)
    assert s is not None and s.family == "tiles"
    ip = proc.image_processor
    for h, w in candidate_sizes(MP)[::7]:
        _, rows, cols = ip.get_number_of_image_patches(h, w)
        # Idefics3Processor._get_num_multimodal_tokens with a tokenizer that merges "\n\n"
        expected = 169 + 3 + (rows * ((169 + 2) * cols + 1) if rows else 0)
        assert image_tokens(s, h, w) == expected, (h, w)
    assert worst_case_image_tokens(s, MP) == 169 + 3 + 4 * (4 * 171 + 1)  # 4 x 4 tiles + the global image
    assert Idefics3Processor  # the class whose arithmetic the formula above follows


def test_tiny_llava_limit_covers_every_prompt_it_accepts(tiny_llava):
    from PIL import Image

    from recaption.captioner.model import Captioner, CaptionerConfig

    cap = Captioner(CaptionerConfig(model=tiny_llava, max_new_tokens=4)).load()
    text_tokens = cap.config.max_prompt_text_tokens
    for h, w in [(10, 500), (500, 10), (300, 300)]:
        n = cap._prompt_length(Image.new("RGB", (w, h)))
        assert n <= cap.max_prompt_tokens - text_tokens + 1 + 8  # image + template, under the limit


def test_share_of_a_gpu():
    gib = 1024**3
    assert share_of_free_memory(127 * gib, 141 * gib, 1.0) == 127 * gib
    assert share_of_free_memory(127 * gib, 141 * gib, 0.5) == int(70.5 * gib)
    assert share_of_free_memory(40 * gib, 141 * gib, 0.5) == 40 * gib
    with pytest.raises(ValueError, match="gpu_share"):
        share_of_free_memory(1, 1, 0)


def test_batch_counts_the_cache_it_allocates():
    """The issue's case: LLaVA-1.5-7B on an H200, a 1,536-slot cache must give a batch that fits."""
    gib = 1024**3
    kv = 2 * 32 * 32 * 128 * 2  # bytes per token: 32 layers, 32 heads x 128, K and V, bf16
    budget = 127 * gib * 0.9 - 2 * gib
    for cache_len in (1152, 1536):
        b = batch_for_memory(budget, kv, cache_len, cache_len - 512, 4096, 11008, 2, 256)
        assert b * kv * cache_len <= budget
    small = batch_for_memory(budget, kv, 1152, 640, 4096, 11008, 2, 256)
    large = batch_for_memory(budget, kv, 1536, 1024, 4096, 11008, 2, 256)
    assert large < small
