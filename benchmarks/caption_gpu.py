"""Captioning throughput on one GPU: the project's Captioner against plain ``model.generate``.

The model is LLaVA-1.5-7B's exact architecture (CLIP ViT-L/14-336 + Vicuna-7B, 7.06B parameters)
with random weights, built in bf16 directly on the GPU: nothing is downloaded. Inputs are real
photos (``../shared/data/web_pairs/images`` or ``--images DIR``) preprocessed at 336 px, and every
image generates exactly ``--new-tokens`` tokens (min = max new tokens), so every setting does the
same work. Measured in one run, on one card:

- plain ``model.generate`` at batch 1 and at batch 64 (inputs already preprocessed and on the GPU:
  the baseline pays for generation only);
- the Captioner end to end from image files (decode, pixel cap, chat template and processor on CPU
  threads, overlapped with generation) for each variant in ``--variants``: ``NAME:cache:batch[:compile]``
  (batch 0: the Captioner's automatic batch size from free GPU memory).

Prints a table of images/s and the ratio to plain batch 64, and writes it as JSON (``--json``).

    python benchmarks/caption_gpu.py                 # full run (~3 min on an H200, model build included)
    python benchmarks/caption_gpu.py --quick         # fewer images per setting
    python benchmarks/caption_gpu.py --tiny --quick  # CPU dry run on the tiny model (seconds)
    python benchmarks/caption_gpu.py --family qwen2.5-vl --quick   # another family's 7B/8B architecture
    python benchmarks/caption_gpu.py --family idefics3 --tiny --quick  # that family's tiny model (CPU)

``--family`` (default ``llava``: LLaVA-1.5-7B as below) builds ``llava-next`` (llava-v1.6-mistral-7b),
``qwen2-vl`` / ``qwen2.5-vl`` (the 7B Instruct models) or ``idefics3`` (Idefics3-8B-Llama3) from the
configuration values in :data:`REAL_ARCHITECTURES`, with the family's tiny tokenizer (the hub's
vocabulary size kept in the embedding) and the checkpoint's image settings on its processor.

Measured on 2026-11-26, one NVIDIA H200 (torch 2.11, transformers 5.24, 16-core VM), 128 tokens per
image, 606 input tokens; two runs on the same warm machine, each with its own plain baselines:

    setting                  batch   img/s   vs plain b64 (same run)
    plain generate b1            1    0.14
    plain generate b64          64    7.00   1.00x   (run 2: 7.49)
    Captioner dynamic cache    128   12.58   1.80x
    Captioner static cache     128   23.56   3.37x
    Captioner static, auto     192   25.62   3.66x
    Captioner static+compile   128   26.04   3.72x   (compile warm-up 28 s)
    Captioner static+compile   192   27.56   3.68x   (run 2; warm-up 30 s)

Prefill of 64 images took 1.15 s. The plain baselines on that machine were slower than the H100
anchors in the issue (0.34 and 11.3 img/s), so the ratios there flatter the Captioner; no H100 figure
has been measured yet.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.util
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recaption.captioner.model import Captioner, CaptionerConfig  # noqa: E402
from recaption.captioner.prompts import SAM_PROMPT  # noqa: E402

DEFAULT_VARIANTS = (
    "dynamic-b128:dynamic:128",
    "static-b128:static:128",
    "static-auto:static:0",
    "static-b128-compile:static:128:compile",
    "static-auto-compile:static:0:compile",
)


def default_images_dir() -> Path:
    shared = Path(os.environ.get("RECAPTION_SHARED", ROOT / ".." / "shared"))
    return shared / "data" / "web_pairs" / "images"


def llava15_7b_config(image_token_id: int, pad_token_id: int, bos: int, eos: int) -> Any:
    """``llava-hf/llava-1.5-7b-hf``'s configuration, spelled out (vocabulary 32064 as on the hub)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(  # openai/clip-vit-large-patch14-336
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text = LlamaConfig(  # type: ignore[call-arg]  # lmsys/vicuna-7b-v1.5
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad_token_id,
    )
    return LlavaConfig(  # type: ignore[call-arg]
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=576,
    )


def llava15_processor() -> Any:
    """A local processor with LLaVA-1.5's image pipeline (336 px) and chat template.

    The tokenizer is a byte-level BPE trained on the fly (the embedding keeps the hub's 32064 rows);
    the SAM prompt comes out within a few tokens of the real tokenizer's length.
    """
    from transformers import CLIPImageProcessor, LlavaProcessor

    from recaption.captioner.tiny import LLAVA_CHAT_TEMPLATE, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(vocab_size=32000, model_max_length=4096)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        do_center_crop=True,
        resample=3,  # bicubic, as the hub's preprocessor_config.json
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


# The published 7B/8B checkpoints' architectures, from their config.json on the hub (no download:
# the values are written here). Token ids come from the local tiny tokenizer; the embedding keeps
# the hub's vocabulary size, so the text model's cost is the real one.
# Checked (2026-12-02, the `search` tool, no hub access) against public copies of those config.json
# files and module dumps: Qwen2.5-VL-7B's vision block (1280 wide, MLP 3420, window 112, full attention
# in 7/15/23/31, merger to 3584) and text model (3584, 28 layers, 4 KV heads, vocab 152064); Idefics3-8B's
# SigLIP (1152, 27 layers, 16 heads, 364 px, patch 14), text (4096, vocab 128259, 8 KV heads, MLP 14336)
# and scale_factor 2; llava-v1.6-mistral's vocab 32064. The built models' parameter counts match the
# hub's (7.57B, 8.29B, 8.29B, 8.46B; tests/captioner/test_benchmark_dry_run.py checks them).
REAL_ARCHITECTURES: dict[str, dict[str, Any]] = {
    # llava-hf/llava-v1.6-mistral-7b-hf: CLIP ViT-L/14-336 + Mistral-7B-Instruct-v0.2, 5 any-res canvases
    "llava-next": {
        "checkpoint": "llava-hf/llava-v1.6-mistral-7b-hf",
        "top": {
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
            "projector_hidden_act": "gelu",
            "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        },
        "text": {
            "model_type": "mistral",
            "vocab_size": 32064,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "sliding_window": None,
            "tie_word_embeddings": False,
        },
        "vision": {
            "model_type": "clip_vision_model",
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 336,
            "patch_size": 14,
            "projection_dim": 768,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
        },
    },
    # Qwen/Qwen2-VL-7B-Instruct: 675M-parameter ViT (32 blocks, 1280 wide) + Qwen2-7B
    "qwen2-vl": {
        "checkpoint": "Qwen/Qwen2-VL-7B-Instruct",
        "top": {},
        "text": {
            "model_type": "qwen2_vl_text",
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [16, 24, 24],
                "rope_theta": 1000000.0,
            },
            "tie_word_embeddings": False,
        },
        "vision": {
            "model_type": "qwen2_vl",
            "depth": 32,
            "embed_dim": 1280,
            "hidden_size": 3584,
            "hidden_act": "quick_gelu",
            "mlp_ratio": 4,
            "num_heads": 16,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
    },
    # Qwen/Qwen2.5-VL-7B-Instruct: windowed-attention ViT (full attention in blocks 7/15/23/31) + Qwen2.5-7B
    "qwen2.5-vl": {
        "checkpoint": "Qwen/Qwen2.5-VL-7B-Instruct",
        "top": {},
        "text": {
            "model_type": "qwen2_5_vl_text",
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [16, 24, 24],
                "rope_theta": 1000000.0,
            },
            "tie_word_embeddings": False,
        },
        "vision": {
            "model_type": "qwen2_5_vl",
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "hidden_act": "silu",
            "num_heads": 16,
            "out_hidden_size": 3584,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
    },
    # HuggingFaceM4/Idefics3-8B-Llama3: SigLIP-so400m at 364 px tiles + Llama-3.1-8B-Instruct
    "idefics3": {
        "checkpoint": "HuggingFaceM4/Idefics3-8B-Llama3",
        "top": {"scale_factor": 2},
        "text": {
            "model_type": "llama",
            "vocab_size": 128259,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
            "tie_word_embeddings": False,
        },
        "vision": {
            "model_type": "idefics3_vision",
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "image_size": 364,
            "patch_size": 14,
        },
    },
}
# Token ids the real text config takes from the tiny tokenizer (not from the hub's numbering).
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def real_family_config(family: str, tiny_config: Any) -> Any:
    """The family's published 7B/8B architecture: the tiny config's token ids, the hub's sizes."""
    arch = REAL_ARCHITECTURES[family]
    data = tiny_config.to_dict()
    tiny_text = data["text_config"]
    data["text_config"] = {**{k: tiny_text.get(k) for k in TOKEN_ID_KEYS}, **arch["text"]}
    data["vision_config"] = dict(arch["vision"])
    data.update(arch["top"])
    for key in ("architectures", "_name_or_path", "transformers_version", "dtype", "torch_dtype"):
        data.pop(key, None)
    return type(tiny_config).from_dict(data)


def real_family_processor(family: str, processor: Any) -> Any:
    """Set the checkpoint's image settings on the tiny processor (its tokenizer stays)."""
    from recaption.captioner.families import family as family_module

    ip = processor.image_processor
    if family == "llava-next":  # llava-v1.6 preprocessor_config.json
        ip.size = {"shortest_edge": 336}
        ip.crop_size = {"height": 336, "width": 336}
        ip.image_grid_pinpoints = REAL_ARCHITECTURES[family]["top"]["image_grid_pinpoints"]
    elif family in ("qwen2-vl", "qwen2.5-vl"):
        # Qwen's min_pixels, and its recommended captioning budget (1280 tokens) as max_pixels: the
        # checkpoint's 12.8 MP default would give a 16k-token prompt per large photo.
        family_module(family).apply_options(processor, {"min_pixels": 3136, "max_pixels": 1280 * 28 * 28})
    elif family == "idefics3":  # Idefics3-8B: 364 px tiles, 4 per side, 169 tokens per tile
        ip.max_image_size = {"longest_edge": 364}
        family_module(family).apply_options(processor, {"longest_edge": 4 * 364, "do_image_splitting": True})
        processor.image_seq_len = (364 // 14) ** 2 // 2**2
    return processor


def build_family(args: argparse.Namespace, device: str) -> tuple[Any, Any, str]:
    """The family's tiny model (``--tiny``), or its real architecture with random bf16 weights."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from recaption.captioner.families import family as family_module
    from recaption.captioner.families import load_processor

    folder = family_module(args.family).build_tiny(Path(tempfile.mkdtemp(prefix="tiny-family-")) / "model")
    tiny_config = AutoConfig.from_pretrained(folder)
    processor = load_processor(tiny_config.model_type, folder)
    if args.tiny:
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
        return model.to(device).eval(), processor, f"tiny-{args.family} (random)"
    config = real_family_config(args.family, tiny_config)
    processor = real_family_processor(args.family, processor)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(
            config, dtype=torch.bfloat16, attn_implementation=args.attn
        ).eval()
    checkpoint = REAL_ARCHITECTURES[args.family]["checkpoint"]
    return model, processor, f"{args.family}: {checkpoint} architecture (random bf16)"


def build_model(args: argparse.Namespace, device: str) -> tuple[Any, Any, str]:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    if args.family != "llava":
        return build_family(args, device)
    if args.tiny:
        from recaption.captioner.tiny import build_tiny_llava

        folder = build_tiny_llava(Path(tempfile.mkdtemp(prefix="tiny-llava-")) / "model", image_size=28)
        processor = AutoProcessor.from_pretrained(folder)
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
        model = model.to(device).eval()  # type: ignore[arg-type]
        return model, processor, "tiny-llava (random)"
    processor = llava15_processor()
    tok = processor.tokenizer
    config = llava15_7b_config(
        tok.convert_tokens_to_ids("<image>"), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(
            config, dtype=torch.bfloat16, attn_implementation=args.attn
        ).eval()
    return model, processor, "llava-1.5-7b architecture (random bf16)"


def load_images(files: list[Path], n: int) -> list[Any]:
    from PIL import Image

    out = []
    for i in range(n):
        with Image.open(files[i % len(files)]) as im:
            out.append(im.convert("RGB"))
    return out


def list_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def plain_inputs(processor: Any, images: list[Any], device: str, dtype: Any) -> Any:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": SAM_PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    processor.tokenizer.padding_side = "left"
    inputs = processor(images=images, text=[text] * len(images), return_tensors="pt", padding=True)
    inputs = inputs.to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return inputs


def time_plain(
    model: Any,
    processor: Any,
    images: list[Any],
    *,
    batch: int,
    n_images: int,
    new_tokens: int,
    device: str,
    lengths: list[int] | None = None,
) -> dict:
    """Plain ``model.generate`` (library defaults: dynamic cache, no compile) on preprocessed inputs.

    With ``lengths`` rows end at lengths drawn from them (the same distribution as the captioner's).
    """
    import torch

    if lengths:
        eos = processor.tokenizer.eos_token_id
        restore = draw_lengths(model, lengths, eos, seed=1)
        try:
            return time_plain(
                model,
                processor,
                images,
                batch=batch,
                n_images=n_images,
                new_tokens=max(lengths),
                device=device,
            ) | {"lengths": "real"}
        finally:
            restore()
    min_new = 0 if draws_lengths(model) else new_tokens  # drawn lengths: rows end at their own
    batches = [images[i : i + batch] for i in range(0, n_images, batch)]
    prepared = [plain_inputs(processor, b, device, model.dtype) for b in batches]
    with torch.inference_mode():
        model.generate(**prepared[0], max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        generated = 0
        for inputs in prepared:
            out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=min_new, do_sample=False)
            generated += (out.shape[1] - inputs["input_ids"].shape[1]) * out.shape[0]
        sync(device)
        elapsed = time.perf_counter() - t0
    n = sum(len(b) for b in batches)
    return {
        "images": n,
        "seconds": elapsed,
        "images_per_s": n / elapsed,
        "input_tokens": int(prepared[0]["input_ids"].shape[1]),
        "generated_tokens": int(generated),
    }


def time_prefill(model: Any, processor: Any, images: list[Any], device: str) -> float:
    """Seconds for one forward pass (prefill, vision tower included) over ``images``."""
    import torch

    inputs = plain_inputs(processor, images, device, model.dtype)
    with torch.inference_mode():
        model(**inputs, logits_to_keep=1)
        sync(device)
        t0 = time.perf_counter()
        model(**inputs, logits_to_keep=1)
        sync(device)
        return time.perf_counter() - t0


def time_captioner(
    model: Any,
    processor: Any,
    files: list[Path],
    variant: dict,
    *,
    n_batches: int,
    new_tokens: int,
    device: str,
    lengths: list[int] | None = None,
    stop_loops: bool = True,
) -> dict:
    """The Captioner end to end from image files, after a warm-up batch. ``batch`` 0: automatic.

    ``lengths``: rows end at lengths drawn from these (real captions) instead of all at ``new_tokens``.
    """
    cfg = CaptionerConfig(
        model="bench",
        device=device,
        max_new_tokens=max(lengths) if lengths else new_tokens,
        min_new_tokens=0 if lengths else new_tokens,
        probe=False,
        stop_loops=stop_loops,
        batch_size=variant["batch"],
        cache=variant["cache"],
        compile=variant["compile"],
        prefetch_workers=variant.get("workers", 8),
    )
    cap = Captioner.from_model(model, processor, cfg, model_id="bench")
    batch = cap.batch_size  # resolved when batch_size is 0
    warm_cfg = dataclasses.replace(cfg, max_new_tokens=4, min_new_tokens=4, batch_size=batch)
    restore = draw_lengths(model, lengths, cap._eos_ids[0]) if lengths else None
    warm = Captioner.from_model(model, processor, warm_cfg, model_id="bench")

    def load(path: Path) -> tuple[Any, str]:
        return cap.decode(path.read_bytes()).image, SAM_PROMPT

    items = [files[i % len(files)] for i in range(batch * n_batches)]
    t0 = time.perf_counter()
    for _ in warm.caption_stream(items[:batch], load):
        pass
    sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        results = [r for _, r in cap.caption_stream(items, load)]
        sync(device)
    finally:
        if restore is not None:
            restore()
    elapsed = time.perf_counter() - t0
    errors = [r.error for r in results if r.error]
    return {
        "batch": batch,
        "images": len(results),
        "seconds": elapsed,
        "images_per_s": len(results) / elapsed,
        "warmup_s": warm_s,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "oom_splits": cap.stats.oom_splits,
        "generate_s": cap.stats.generate_s,
        "generated_tokens": cap.stats.generated_tokens,
        "length_finishes": sum(r.finish_reason == "length" for r in results),
        "loop_stops": sum(r.finish_reason == "repetition" for r in results),
        "mean_tokens": sum(r.num_tokens for r in results) / max(1, len(results)),
        "max_new_tokens": cfg.max_new_tokens,
        "cache_len": cap.max_cache_len,
        **padding_waste(results, cap.stats.batch_sizes),
    }


LENGTHS_FILE = Path(__file__).with_name("caption_lengths.json")


def caption_lengths(cap: int, scale: float = 1.0) -> list[int]:
    """Real dense-caption lengths in tokens (bundled from the shared IIW-400 captions), capped."""
    data = json.loads(LENGTHS_FILE.read_text())
    return [max(2, min(cap, round(n * scale))) for n in data["lengths"]]


class StopAtDrawnLengths:
    """A logits processor: each row ends (EOS forced) after a length drawn from ``lengths``.

    Random weights never choose EOS themselves; this makes rows finish as real captions do, so a
    batch runs to its longest row and the shorter ones idle, as in a real run.
    """

    def __init__(self, lengths: list[int], rows: int, prompt_length: int, eos_id: int, rng: random.Random):
        self.targets = [rng.choice(lengths) for _ in range(rows)]
        self.prompt_length, self.eos_id = prompt_length, eos_id

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        step = input_ids.shape[1] - self.prompt_length + 1  # tokens after this one is chosen
        for row, target in enumerate(self.targets):
            if step >= target:
                scores[row, :] = float("-inf")
                scores[row, self.eos_id] = 0.0
            else:
                scores[row, self.eos_id] = float("-inf")
        return scores


def draw_lengths(model: Any, lengths: list[int], eos_id: int, seed: int = 0) -> Any:
    """Make ``model.generate`` end each row at a drawn length (restore with the returned function)."""
    from transformers import LogitsProcessorList

    rng = random.Random(seed)
    original = model.generate

    def generate(*args: Any, **kw: Any) -> Any:
        ids = kw["input_ids"]
        extra = StopAtDrawnLengths(lengths, ids.shape[0], ids.shape[1], eos_id, rng)
        kw["logits_processor"] = LogitsProcessorList([*(kw.get("logits_processor") or []), extra])
        return original(*args, **kw)

    generate.draws_lengths = True  # type: ignore[attr-defined]
    model.generate = generate
    return lambda: setattr(model, "generate", original)


def draws_lengths(model: Any) -> bool:
    """Whether ``model.generate`` is wrapped by :func:`draw_lengths`."""
    return getattr(model.generate, "draws_lengths", False)


def padding_waste(results: list[Any], batch_sizes: list[int]) -> dict:
    """Row-steps generated after a row had finished, over all row-steps (batch-synchronous decoding)."""
    total = wasted = 0
    i = 0
    for size in batch_sizes:
        rows = [r.num_tokens for r in results[i : i + size]]
        i += size
        if not rows:
            continue
        total += max(rows) * len(rows)
        wasted += sum(max(rows) - n for n in rows)
    return {"padding_waste": wasted / total if total else 0.0, "row_steps": total, "wasted_row_steps": wasted}


def parse_variant(spec: str) -> dict:
    parts = spec.split(":")
    if len(parts) not in (3, 4) or parts[1] not in ("dynamic", "static") or not parts[2].isdigit():
        raise SystemExit(f"bad variant {spec!r}: NAME:dynamic|static:BATCH[:compile]")
    return {
        "name": parts[0],
        "cache": parts[1],
        "batch": int(parts[2]),
        "compile": len(parts) == 4 and parts[3] == "compile",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=None, help="folder of images (default: shared web_pairs)")
    ap.add_argument("--tiny", action="store_true", help="tiny random LLaVA (CPU dry run)")
    ap.add_argument(
        "--family",
        choices=("llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "idefics3"),
        default="llava",
        help="model family: its published 7B/8B architecture (random weights), or its tiny model with --tiny",
    )
    ap.add_argument("--quick", action="store_true", help="fewer images per setting")
    ap.add_argument(
        "--new-tokens", type=int, default=None, help="generated tokens per image (default 128; tiny 16)"
    )
    ap.add_argument("--variants", nargs="*", default=None, help="NAME:dynamic|static:BATCH[:compile] ...")
    ap.add_argument(
        "--batches", type=int, default=None, help="timed batches per Captioner variant (default 2; quick 1)"
    )
    ap.add_argument(
        "--b1-images", type=int, default=None, help="images for plain batch 1 (default 3; quick 2)"
    )
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument(
        "--budget-s", type=float, default=330.0, help="skip remaining variants after this many seconds"
    )
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument(
        "--stop-loops",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="end a row whose tokens loop (the captioner's default); --no-stop-loops: run it to the cap",
    )
    ap.add_argument(
        "--lengths",
        choices=("real", "fixed"),
        default="real",
        help="real: each row ends at a length drawn from real dense captions (caption_lengths.json); "
        "fixed: every row generates --new-tokens (the old best case)",
    )
    args = ap.parse_args(argv)

    import torch

    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    new_tokens = args.new_tokens or (16 if args.tiny else 128)
    n_batches = args.batches or (1 if args.quick else 2)
    b1_images = args.b1_images or (2 if args.quick else 3)
    variants = [parse_variant(v) for v in (args.variants or DEFAULT_VARIANTS)]
    # Real lengths: a 512-token cap as the captioner's default; the tiny dry run scales them to 1/16.
    lengths = (
        caption_lengths(32 if args.tiny else 512, 1 / 16 if args.tiny else 1.0)
        if args.lengths == "real"
        else None
    )
    if args.tiny:  # small batches keep the dry run short; the code paths are the same
        variants = [{**v, "batch": v["batch"] // 16, "compile": False} for v in variants]
    plain_batch = 4 if args.tiny else 64
    folder = args.images or default_images_dir()
    files = list_files(folder) if folder.is_dir() else []
    if not files:
        raise SystemExit(f"no images in {folder} (pass --images DIR)")

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "new_tokens": new_tokens,
        "family": args.family,
        "rows": [],
        "notes": [],
    }
    import transformers

    report["transformers"] = transformers.__version__
    report["vllm_installed"] = importlib.util.find_spec("vllm") is not None

    def emit(row: dict) -> None:
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))

    t0 = time.perf_counter()
    model, processor, what = build_model(args, device)
    sync(device)
    report["model"] = what
    report["build_s"] = time.perf_counter() - t0
    report["parameters"] = sum(p.numel() for p in model.parameters())
    print(
        f"# {what} on {report['device']}: {report['parameters'] / 1e9:.2f}B parameters, "
        f"built in {report['build_s']:.1f}s"
    )

    images = load_images(files, max(plain_batch, b1_images))
    emit(
        {
            "name": "plain-b1",
            **time_plain(
                model,
                processor,
                images,
                batch=1,
                n_images=b1_images,
                new_tokens=new_tokens,
                device=device,
                lengths=lengths,
            ),
        }
    )
    emit(
        {
            "name": f"plain-b{plain_batch}",
            **time_plain(
                model,
                processor,
                images,
                batch=plain_batch,
                n_images=plain_batch,
                new_tokens=new_tokens,
                device=device,
                lengths=lengths,
            ),
        }
    )
    with contextlib.suppress(Exception):
        report["prefill_s_plain_batch"] = time_prefill(model, processor, images[:plain_batch], device)
    del images
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

    for v in variants:
        if time.perf_counter() - started > args.budget_s:
            report["notes"].append(f"skipped {v['name']}: time budget of {args.budget_s:.0f}s spent")
            print(f"# skipped {v['name']} (budget)", flush=True)
            continue
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            row = time_captioner(
                model,
                processor,
                files,
                v,
                n_batches=n_batches,
                new_tokens=new_tokens,
                device=device,
                lengths=lengths,
                stop_loops=args.stop_loops,
            )
            emit(
                {"name": v["name"], "cache": v["cache"], "batch": v["batch"], "compile": v["compile"], **row}
            )
        except Exception as e:  # one failing technique must not hide the others' figures
            emit({"name": v["name"], "error": f"{type(e).__name__}: {str(e)[:500]}"})
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
            report.setdefault("peak_memory_gib", {})[v["name"]] = torch.cuda.max_memory_allocated() / 2**30

    base = next((r for r in report["rows"] if r["name"] == f"plain-b{plain_batch}"), None)
    print()
    print(
        f"{'setting':28s} {'images':>7s} {'seconds':>8s} {'img/s':>8s} {'vs plain b' + str(plain_batch):>14s}"
    )
    for r in report["rows"]:
        if "error" in r:
            print(f"{r['name']:28s} failed: {r['error'][:100]}")
            continue
        ratio = r["images_per_s"] / base["images_per_s"] if base else float("nan")
        r["ratio_vs_plain_batch"] = ratio
        waste = f"  padding waste {r['padding_waste']:.0%}" if "padding_waste" in r else ""
        line = f"{r['name']:28s} {r['images']:7d} {r['seconds']:8.2f} {r['images_per_s']:8.2f} {ratio:13.2f}x"
        print(line + waste)
    print(
        f"\ntotal {time.perf_counter() - started:.0f}s; {report['device']}; torch {report['torch']}; "
        f"transformers {report['transformers']}; vllm installed: {report['vllm_installed']}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
