"""SD-VAE encoder throughput at PixArt's 1024 (and 512) buckets: plain ``encode`` vs ImageEncoder.

The model is the SD VAE architecture (``stabilityai/sd-vae-ft-ema``'s config, spelled out in
``recaption.encoder.vae.SD_VAE_CONFIG``) with random weights, saved and loaded back through
``from_pretrained`` like a hub id; speed does not depend on the weights or the pixels.

- baseline: ``AutoencoderKL.encode`` in bfloat16, NCHW, batch 8, at 1024x1024 (and 512x512), with
  PyTorch's defaults (the issue's anchor on an H100: 34 images/s at 1024, 165 at 512);
- ImageEncoder variants at 1024 over images spread across the buckets like the 155 real photos
  of ``shared/data`` (web_pairs + sam; the histogram is below), GPU part only (pre-cropped uint8
  arrays in, mean ‖ std in the store dtype out, on the GPU): eager NCHW, channels-last, fused
  GroupNorm+SiLU (``compile="norms"``), the whole encoder compiled (``compile="full"``), batch
  sizes; then the best variant at 512 too;
- the attention block alone (the 128x128-token mid-block at 1024, head dim 512) per SDPA backend;
- end to end: ``ImageEncoder.encode`` on PIL images (CPU resize+crop in threads, overlapped with
  the GPU) for the best variant.

Warm-up (cuDNN autotuning, compilation) is timed apart and reported. Each variant prints its line
as soon as it is measured, so a run cut short still reports what it did.

Run on a GPU:   ``PYTHONPATH=. python benchmarks/vae_gpu.py [--profile]``  (about 3.5 minutes)
CPU smoke run:  ``PYTHONPATH=. python benchmarks/vae_gpu.py --tiny``  (tiny VAE, small sizes)

Measured (NVIDIA H200, torch 2.11.0+cu130, diffusers 0.42.1; 2026-11-26; 320 images per line):

    [1024] plain encode, 1024x1024, batch 8, NCHW, defaults:     37.3 images/s
    [512]  plain encode, 512x512, batch 8, NCHW, defaults:      168.5 images/s
      attention math 13.65 ms/image, efficient 4.57 ms/image, flash and cudnn: no kernel (head dim 512)
    [1024] ImageEncoder norms-cl      batch  8:     40.3 images/s (x1.08 plain; warm-up 20.2s)
    [1024] ImageEncoder eager-cl      batch  8:     22.6 images/s (x0.61 plain; warm-up 4.2s)
    [1024] ImageEncoder eager-nchw    batch  8:     38.5 images/s (x1.03 plain; warm-up 14.9s)
    [1024] ImageEncoder full-cl       batch  8:     46.7 images/s (x1.25 plain; warm-up 52.0s)
    [1024] ImageEncoder norms-cl-b16  batch 16:     39.8 images/s (x1.07 plain; warm-up 19.3s)
    [512]  ImageEncoder full-cl       batch  8:    157.8 images/s (x0.94 plain; warm-up 7.3s)
    [1024] end to end ImageEncoder.encode(full-cl), 16 resize threads: 45.5 images/s (x1.22 plain)

The ``*-gemm`` and ``*-pad`` variants were added after that run and are not measured yet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

# Buckets at 1024 of the 155 real photos in shared/data (web_pairs + sam), key: count.
REAL_PHOTO_BUCKETS = {
    "0.68": 43, "1.0": 30, "0.72": 20, "1.46": 12, "0.57": 9, "1.29": 8, "1.07": 7, "0.78": 7,
    "0.6": 3, "1.38": 3, "0.94": 3, "0.48": 2, "0.88": 2, "1.21": 2, "0.42": 1, "0.82": 1,
    "1.13": 1, "0.52": 1,
}  # fmt: skip


def log(msg: str) -> None:
    print(msg, flush=True)


def bucket_plan(n_images: int, resolution: int, scale_down: int = 1, top: int = 8) -> list[tuple[int, int]]:
    """(H, W) of ``n_images`` crops spread over the ``top`` most common buckets of the real photos.

    (The top 8 hold 85% of the photos; fewer distinct shapes keep cuDNN autotuning short.)
    """
    from recaption.encoder.buckets import bucket_for_key

    common = sorted(REAL_PHOTO_BUCKETS.items(), key=lambda kv: -kv[1])[:top]
    total = sum(c for _, c in common)
    sizes: list[tuple[int, int]] = []
    for key, count in common:
        b = bucket_for_key(key, resolution)
        k = max(1, round(n_images * count / total))
        sizes += [(b.height // scale_down, b.width // scale_down)] * k
    return sizes


def sync(torch: Any) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_plain(
    torch: Any, folder: str, *, size: int, batch: int, n_images: int, device: str, dtype: Any
) -> float:
    """``vae.encode`` at ``size``x``size`` with PyTorch's defaults; images/s."""
    from diffusers import AutoencoderKL

    torch.backends.cudnn.benchmark = False
    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype).clamp_(-1, 1)
    n_batches = max(1, n_images // batch)
    with torch.inference_mode():
        for _ in range(2):
            vae.encode(x).latent_dist.mean  # noqa: B018 (warm-up)
        sync(torch)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            d = vae.encode(x).latent_dist
            _ = torch.cat([d.mean, d.std], 1)
        sync(torch)
        dt = time.perf_counter() - t0
    del vae
    return n_batches * batch / dt


def make_batches(sizes: list[tuple[int, int]], batch: int, seed: int = 0) -> list[np.ndarray]:
    """uint8 (B, H, W, 3) arrays, one bucket per batch, partial batches as a real shard has them."""
    rng = np.random.default_rng(seed)
    by_size: dict[tuple[int, int], int] = {}
    for s in sizes:
        by_size[s] = by_size.get(s, 0) + 1
    out = []
    for (h, w), count in by_size.items():
        proto = rng.integers(0, 256, size=(batch, h, w, 3), dtype=np.uint8)
        for start in range(0, count, batch):
            out.append(proto[: min(batch, count - start)])
    return out


def bench_encoder(torch: Any, encoder: Any, batches: list[np.ndarray]) -> tuple[float, float]:
    """(warm-up seconds, images/s) of ``encode_arrays`` over the batches (GPU part only)."""
    t0 = time.perf_counter()
    seen = set()
    for b in batches:  # one batch of each shape: cuDNN autotuning, compilation
        if b.shape not in seen:
            seen.add(b.shape)
            encoder.encode_arrays(b, to_cpu=False)
    sync(torch)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = [encoder.encode_arrays(b, to_cpu=False) for b in batches]
    sync(torch)
    dt = time.perf_counter() - t0
    n = sum(o.shape[0] for o in outs)
    return warm, n / dt


def bench_attention(
    torch: Any, folder: str, *, tokens: int, batch: int, device: str, dtype: Any
) -> dict[str, float]:
    """ms per image of the mid-block attention (tokens x head dim 512) per SDPA backend."""
    from diffusers import AutoencoderKL

    from recaption.encoder.vae import _sdpa_backend

    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
    attn = vae.encoder.mid_block.attentions[0]
    c = attn.to_q.in_features
    side = int(tokens**0.5)
    x = torch.randn(batch, c, side, side, device=device, dtype=dtype)
    out = {}
    for name in ("gemm", "math", "efficient", "flash", "cudnn"):
        try:
            if name == "gemm":
                from recaption.encoder.vae import GemmAttnProcessor

                attn.set_processor(GemmAttnProcessor())
            with torch.inference_mode(), _sdpa_backend(name):
                attn(x)
                sync(torch)
                t0 = time.perf_counter()
                for _ in range(3):
                    attn(x)
                sync(torch)
            out[name] = (time.perf_counter() - t0) / 3 / batch * 1e3
            log(f"  attention {name:10s} {out[name]:8.2f} ms/image")
            if name == "gemm":
                from diffusers.models.attention_processor import AttnProcessor2_0

                attn.set_processor(AttnProcessor2_0())
        except Exception as e:
            log(f"  attention {name:10s} unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    del vae
    return out


def profile(torch: Any, encoder: Any, batches: list[np.ndarray]) -> None:
    """Top GPU kernels over a few batches (already warm), by total device time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for b in batches:
            encoder.encode_arrays(b, to_cpu=False)
        sync(torch)
    n = sum(b.shape[0] for b in batches)
    events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0]
    events.sort(key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in events)
    log(f"profile: {n} images, GPU busy {total / 1e3 / n:.2f} ms/image; top kernels:")
    for e in events[:25]:
        log(
            f"  {e.device_time_total / 1e3 / n:7.3f} ms/img {e.count // len(batches):5d}/batch  {e.key[:110]}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny random VAE and small sizes (runs on a CPU)")
    ap.add_argument("--images", type=int, default=320, help="images per measurement")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[1024, 512])
    ap.add_argument(
        "--variants", nargs="+", default=["norms-cl", "eager-cl", "eager-nchw", "full-cl", "norms-cl-b16"]
    )
    ap.add_argument(
        "--budget-s", type=float, default=210.0, help="skip variants once this much time is spent"
    )
    ap.add_argument("--json", default="", help="also write the results here")
    ap.add_argument("--profile", action="store_true", help="print the top GPU kernels of the best variant")
    args = ap.parse_args()

    import torch

    from recaption.encoder.tiny_vae import build_tiny_vae
    from recaption.encoder.vae import SD_VAE_CONFIG, ImageEncoder, VaeConfig

    started = time.perf_counter()
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    scale_down = 8 if args.tiny else 1  # tiny: 1024 buckets shrunk 8x so a CPU gets through
    n_images = 24 if args.tiny else args.images
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "torch": torch.__version__,
    }
    log(f"device: {results['device']}, torch {torch.__version__}, dtype {dtype}")

    tmp = tempfile.mkdtemp(prefix="vae-bench-")
    folder = os.path.join(tmp, "vae")
    if args.tiny:
        build_tiny_vae(folder)
    else:
        from diffusers import AutoencoderKL

        torch.manual_seed(0)
        AutoencoderKL(**SD_VAE_CONFIG).to(torch.bfloat16).save_pretrained(folder)
    log(f"model saved in {time.perf_counter() - started:.1f}s")

    for res in args.resolutions:
        size = res // scale_down
        ips = bench_plain(torch, folder, size=size, batch=8, n_images=n_images, device=device, dtype=dtype)
        results[f"plain_{res}"] = ips
        log(f"[{res}] plain encode, {size}x{size}, batch 8, NCHW, defaults: {ips:8.1f} images/s")

    if on_gpu and not args.tiny:
        results["attention_ms"] = bench_attention(
            torch, folder, tokens=(1024 // 8) ** 2, batch=8, device=device, dtype=dtype
        )

    variants = {
        "eager-nchw": {"channels_last": False, "compile": "none"},
        "eager-cl": {"channels_last": True, "compile": "none"},
        "norms-cl": {"channels_last": True, "compile": "norms"},
        "norms-cl-b16": {"channels_last": True, "compile": "norms", "batch_size": 16},
        "full-cl": {"channels_last": True, "compile": "full"},
        "full-cl-b16": {"channels_last": True, "compile": "full", "batch_size": 16},
        "norms-cl-gemm": {"channels_last": True, "compile": "norms", "attention": "gemm"},
        "full-cl-gemm": {"channels_last": True, "compile": "full", "attention": "gemm"},
        "full-cl-gemm-pad": {
            "channels_last": True,
            "compile": "full",
            "attention": "gemm",
            "pad_input": True,
        },
        "full-cl-gemm-b16": {"channels_last": True, "compile": "full", "attention": "gemm", "batch_size": 16},
    }
    best: tuple[float, str] = (0.0, "")
    for name in args.variants:
        spent = time.perf_counter() - started
        if spent > args.budget_s:
            log(f"skipping {name}: {spent:.0f}s spent (budget {args.budget_s:.0f}s)")
            continue
        opts = {"batch_size": 8, **variants[name]}
        if not on_gpu and opts.get("compile") == "full":
            log(f"skipping {name} on the CPU")
            continue
        try:
            res = args.resolutions[0]
            cfg = VaeConfig(model=folder, resolutions=tuple(args.resolutions), preprocess_threads=0, **opts)
            enc = ImageEncoder(cfg).load()
            batches = make_batches(bucket_plan(n_images, res, scale_down), opts["batch_size"])
            warm, ips = bench_encoder(torch, enc, batches)
            results[f"{name}_{res}"] = ips
            log(
                f"[{res}] ImageEncoder {name:13s} batch {opts['batch_size']:2d}: {ips:8.1f} images/s "
                f"(x{ips / results[f'plain_{res}']:.2f} plain; warm-up {warm:.1f}s, {len(batches)} batches)"
            )
            if ips > best[0]:
                best = (ips, name)
            del enc
        except Exception as e:
            log(f"{name} failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        if on_gpu:
            torch.cuda.empty_cache()

    if best[1]:
        from PIL import Image

        name = best[1]
        opts = {"batch_size": 8, **variants[name]}
        threads = min(16, os.cpu_count() or 4)
        enc = ImageEncoder(
            VaeConfig(model=folder, resolutions=tuple(args.resolutions), preprocess_threads=threads, **opts)
        ).load()
        for res in args.resolutions[1:]:  # the best variant at the other resolutions
            batches = make_batches(bucket_plan(n_images, res, scale_down), opts["batch_size"])
            warm, ips = bench_encoder(torch, enc, batches)
            results[f"{name}_{res}"] = ips
            log(
                f"[{res}] ImageEncoder {name:13s} batch {opts['batch_size']:2d}: {ips:8.1f} images/s "
                f"(x{ips / results[f'plain_{res}']:.2f} plain; warm-up {warm:.1f}s, {len(batches)} batches)"
            )
        res = args.resolutions[0]
        if args.profile and on_gpu:
            profile(torch, enc, make_batches(bucket_plan(n_images, res, scale_down), opts["batch_size"])[:6])
        rng = np.random.default_rng(1)
        # Originals 1.5x the bucket (a typical downscale), so the CPU resize is real work.
        pil = []
        for h, w in bucket_plan(n_images, res, scale_down)[: 8 if args.tiny else None]:
            arr = rng.integers(0, 256, size=(int(h * 1.5), int(w * 1.5), 3), dtype=np.uint8)
            pil.append(Image.fromarray(arr))
        enc.encode(pil[: opts["batch_size"] * 2], res)  # warm (the variant is warm already)
        sync(torch)
        t0 = time.perf_counter()
        out = enc.encode(pil, res)
        dt = time.perf_counter() - t0
        results[f"end_to_end_{res}"] = len(out) / dt
        log(
            f"[{res}] end to end ImageEncoder.encode({name}) on PIL images, {threads} resize threads: "
            f"{len(out) / dt:8.1f} images/s (x{len(out) / dt / results[f'plain_{res}']:.2f} plain)"
        )
    log(f"total {time.perf_counter() - started:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    json.dump(results, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
