from __future__ import annotations

import time

from safetensors.torch import load_file

from recaption.captioner.tiny import LLAVA_CHAT_TEMPLATE, build_tiny_llava


def test_build_is_fast_and_deterministic(tmp_path, tiny_llava):
    t0 = time.perf_counter()
    again = build_tiny_llava(tmp_path / "again")
    assert time.perf_counter() - t0 < 5
    a = load_file(f"{tiny_llava}/model.safetensors")
    b = load_file(f"{again}/model.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (
        __import__("pathlib").Path(tiny_llava) / "tokenizer.json"
    ).read_bytes()


def test_loads_back_like_a_hub_id(tiny_llava, generated_images):
    from transformers import (
        AutoModelForImageTextToText,
        AutoProcessor,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    processor = AutoProcessor.from_pretrained(tiny_llava)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava)
    assert isinstance(processor, LlavaProcessor)
    assert isinstance(model, LlavaForConditionalGeneration)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "USER: <image>\nDescribe it ASSISTANT:"
    inputs = processor(
        images=generated_images[:2], text=[text, text + " more"], return_tensors="pt", padding=True
    )
    image_id = model.config.image_token_id
    # 28 px / 14 px patches = 4 tokens per image (CLS counted, then dropped by the "default" strategy)
    assert (inputs["input_ids"] == image_id).sum(dim=1).tolist() == [4, 4]
    assert inputs["input_ids"][0, 0].item() == processor.tokenizer.pad_token_id  # left padding
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)


def test_chat_template_matches_llava15_format():
    assert "ASSISTANT:" in LLAVA_CHAT_TEMPLATE
    assert "<image>" in LLAVA_CHAT_TEMPLATE
