"""T5 text-feature throughput: PixArt's plain padded computation against recaption's TextEncoder.

GPU run (an H100 or H200; under 4 minutes)::

    python benchmarks/t5_gpu.py

builds ``T5EncoderModel`` with google/t5-v1_1-xxl's exact configuration (d_model 4096, d_ff 10240,
24 layers, 64 heads of 64, gated-GELU, vocabulary 32128) and random weights, directly in bfloat16
on the GPU, and measures captions/s on the real caption length distributions of the shared data:
dense captions (``dense/iiw_IIW-400.jsonl``, field ``IIW``) and raw LAION alt-texts
(``laion/img2dataset_test_1000.parquet``, field ``TEXT``). Variants, all in one run:

- ``plain``: what PixArt's extractor does: every caption padded to 120 tokens, batches of 128,
  transformers' forward (its default attention, SDPA), the whole padded output copied to the host;
- ``trim``: :class:`~recaption.encoder.t5.TextEncoder` with the transformers forward: sorted by
  length, batches under a token budget padded to their longest member, only real tokens copied;
- ``fused``: the same batching through :class:`~recaption.encoder.t5.FusedT5Encoder`;
- ``fused+compile``: the fused block compiled with ``torch.compile`` (dynamic shapes).

Token lengths. The real T5 SentencePiece tokenizer cannot be downloaded here, so by default the
token count of each caption is **estimated**: ``round(1.3 × whitespace words) + 1`` (``</s>``),
capped at 120 (T5's 32k English vocabulary gives about 1.3 pieces per word on English prose; the
ratio is ``--tokens-per-word``). Token ids are then drawn at random (the encoder's cost does not
depend on which ids). With ``--tokenizer PATH`` (a local copy of t5-v1_1-xxl's tokenizer) the
captions are cleaned and tokenized for real. The length distribution used is printed.

Measured (NVIDIA H200, torch 2.11.0+cu130, transformers 5.17, estimated lengths, token budget
32768, median of 2 passes; before the device-to-host copy overlapped the next batch). Captions/s,
ratio to plain, and bf16 matrix TFLOP/s recomputed from the padded token counts:

=================  ==================  ==================
variant            dense (IIW, ×3)     raw (LAION)
=================  ==================  ==================
plain              265  ×1.00  296     271  ×1.00
trim               277  ×1.04  307     2191 ×8.07
fused              372  ×1.40  413     2574 ×9.49
fused+compile      420  ×1.58  466     3036 ×11.19
=================  ==================  ==================

Relative error of the trimmed features against the padded-to-120 computation: 0 (trim, dense),
1.3e-2 (trim, raw: same kernels, other batch shapes), 2.3e-2–2.6e-2 (fused): bfloat16 rounding
accumulated over 24 layers of random weights; in float32 the fused forward agrees to 1e-5 (tests).

CPU smoke run (any machine, seconds)::

    python benchmarks/t5_gpu.py --tiny

does the same with a tiny random T5 and its trained tokenizer (real tokenization of the real
captions through ``TextEncoder.encode``), to check the script end to end; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# google/t5-v1_1-xxl's config.json (the encoder half), spelled out.
T5_V1_1_XXL: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "initializer_factor": 1.0,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}


def default_data_root() -> Path:
    env = os.environ.get("RECAPTION_SHARED")
    return Path(env) / "data" if env else ROOT / ".." / "shared" / "data"


def load_captions(data_root: Path) -> dict[str, list[str]]:
    import pyarrow.parquet as pq

    dense_path = data_root / "dense" / "iiw_IIW-400.jsonl"
    raw_path = data_root / "laion" / "img2dataset_test_1000.parquet"
    for p in (dense_path, raw_path):
        if not p.exists():
            raise SystemExit(f"missing {p}: pass --data-root (the shared data folder)")
    with dense_path.open(encoding="utf-8") as f:
        dense = [json.loads(line)["IIW"] for line in f if line.strip()]
    raw = [t or "" for t in pq.read_table(raw_path, columns=["TEXT"]).column("TEXT").to_pylist()]
    return {"dense": dense, "raw": raw}


def estimate_token_count(text: str, tokens_per_word: float, max_length: int) -> tuple[int, bool]:
    """Estimated T5 tokens with ``</s>``, capped at max_length; and whether it was cut."""
    n = round(tokens_per_word * len(text.split())) + 1
    return min(n, max_length), n > max_length


def tiled(items: Sequence, at_least: int) -> list:
    """Repeat ``items`` until there are at least ``at_least`` (keeps the length distribution)."""
    reps = max(1, -(-at_least // max(len(items), 1)))
    return list(items) * reps


def describe_lengths(lengths: Sequence[int], max_length: int) -> str:
    q = statistics.quantiles(lengths, n=10)
    full = sum(n >= max_length for n in lengths) / len(lengths)
    return (
        f"n={len(lengths)} mean={statistics.fmean(lengths):.1f} p10={q[0]:.0f} "
        f"median={statistics.median(lengths):.0f} p90={q[-1]:.0f} at {max_length}: {full:.0%}"
    )


def build_xxl_on_gpu(device: str):
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(**T5_V1_1_XXL)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = T5EncoderModel(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def flops_per_token(cfg, length: int) -> float:
    """Matrix-multiply FLOPs per token of the encoder (projections + attention over ``length`` keys)."""
    inner = cfg.num_heads * cfg.d_kv
    linear = 4 * cfg.d_model * inner + 3 * cfg.d_model * cfg.d_ff
    attention = 2 * length * inner
    return 2.0 * cfg.num_layers * (linear + attention)


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_passes(fn: Callable[[], object], device: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def plain_pass(model, ids: list[list[int]], max_length: int, batch_size: int, device: str) -> None:
    """PixArt's way: pad every caption to max_length, fixed batches, keep the whole padded output."""
    import torch

    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            input_ids = torch.zeros((len(chunk), max_length), dtype=torch.long)
            mask = torch.zeros((len(chunk), max_length), dtype=torch.long)
            for row, seq in enumerate(chunk):
                input_ids[row, : len(seq)] = torch.as_tensor(seq)
                mask[row, : len(seq)] = 1
            out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            out.to(torch.float16).cpu()


def check_agreement(model, encoder, ids: list[list[int]], max_length: int, device: str) -> float:
    """Relative error of the encoder's trimmed features against the padded-to-max computation."""
    import torch

    sample = ids[:32]
    got = encoder.encode_ids(sample)
    with torch.inference_mode():
        input_ids = torch.zeros((len(sample), max_length), dtype=torch.long)
        mask = torch.zeros((len(sample), max_length), dtype=torch.long)
        for row, seq in enumerate(sample):
            input_ids[row, : len(seq)] = torch.as_tensor(seq)
            mask[row, : len(seq)] = 1
        ref = (
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
            .last_hidden_state.float()
            .cpu()
        )
    num = den = 0.0
    for row, arr in enumerate(got):
        r = ref[row, : arr.shape[0]]
        g = torch.from_numpy(arr.astype("float32"))
        if not torch.isfinite(g).all():
            return float("nan")
        num += float((g - r).pow(2).sum())
        den += float(r.pow(2).sum())
    return (num / max(den, 1e-30)) ** 0.5


def profile_pass(encoder, ids: list[list[int]], device: str, out: Path) -> None:
    """One pass under torch.profiler: where the device time goes, and how busy the device is."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    synchronize(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        encoder.encode_ids(ids)
        synchronize(device)
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    table = events.table(sort_by=key, row_limit=25, max_name_column_width=70)
    out.write_text(table)
    busy = sum(getattr(e, key) for e in events) / 1e6
    print(f"\nprofile ({encoder.kernel}, {len(ids)} captions): wall {wall:.2f}s, device busy {busy:.2f}s")
    print("\n".join(table.splitlines()[:16]))
    _ = torch


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny random T5 on the CPU: an end-to-end smoke run")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument(
        "--data-root", type=Path, default=None, help="the shared data folder (default ../shared/data)"
    )
    ap.add_argument("--tokenizer", default=None, help="a local T5 tokenizer folder: real token lengths")
    ap.add_argument("--tokens-per-word", type=float, default=1.3, help="estimate without --tokenizer")
    ap.add_argument("--max-length", type=int, default=120)
    ap.add_argument("--plain-batch", type=int, default=128)
    ap.add_argument("--token-budget", type=int, default=32768, help="TextEncoder token budget")
    ap.add_argument("--max-batch-size", type=int, default=2048)
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["plain", "trim", "fused", "fused+compile"],
        help="plain, trim, fused, fused+compile; NAME@BUDGET sets that run's token budget",
    )
    ap.add_argument("--datasets", nargs="+", default=["dense", "raw"])
    ap.add_argument("--min-captions", type=int, default=1024, help="tile each data set to at least this many")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="print %% of this bf16 peak (e.g. 790)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--profile", type=Path, default=None, help="profile the last variant; kernel table here")
    args = ap.parse_args(argv)

    import torch

    from recaption.encoder.t5 import TextEncoder, TextEncoderConfig

    device = args.device or ("cpu" if args.tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --tiny for the CPU smoke run")
    captions = load_captions(args.data_root or default_data_root())
    max_length = args.max_length

    t0 = time.perf_counter()
    tmp = None
    if args.tiny:
        from recaption.encoder.tiny_t5 import build_tiny_t5

        tmp = tempfile.TemporaryDirectory()
        folder = build_tiny_t5(tmp.name)
        loader = TextEncoder(
            TextEncoderConfig(
                preset="alpha", model=folder, expected_hidden_size=32, device=device, kernel="transformers"
            )
        ).load()
        model, tokenizer = loader.model, loader.tokenizer
        hidden = 32
    else:
        model = build_xxl_on_gpu(device)
        tokenizer = None
        if args.tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        hidden = 4096
    build_s = time.perf_counter() - t0
    dtype = "float32" if device == "cpu" else "bfloat16"
    print(
        f"device: {torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}; "
        f"torch {torch.__version__}; "
        f"model {'tiny' if args.tiny else 't5-v1_1-xxl (random weights)'} in {dtype}, built in {build_s:.1f}s"
    )

    def make_encoder(kernel: str, budget: int, compile_: bool = False) -> TextEncoder:
        cfg = TextEncoderConfig(
            preset="alpha",
            model="(benchmark)",
            expected_hidden_size=hidden,
            max_length=max_length,
            device=device,
            compute_dtype=dtype,
            kernel=kernel,
            compile=compile_,
            token_budget=budget,
            max_batch_size=args.max_batch_size,
        )
        return TextEncoder(cfg).attach(model, tokenizer if tokenizer is not None else _IdsOnly())

    # Token ids per data set: real tokenization where a tokenizer exists, else estimated lengths.
    token_ids: dict[str, list[list[int]]] = {}
    rng = torch.Generator().manual_seed(0)
    for name in args.datasets:
        texts = tiled(captions[name], args.min_captions)
        if tokenizer is not None:
            enc = make_encoder("transformers", args.token_budget)
            ids, counts = enc.tokenize([enc.prepare_text(t) for t in texts])
            source = "tokenized (alpha cleaning)"
        else:
            est = [estimate_token_count(t, args.tokens_per_word, max_length) for t in texts]
            vocab = model.config.vocab_size
            ids = [[*torch.randint(2, vocab, (n - 1,), generator=rng).tolist(), 1] for n, _ in est]
            counts = [n + int(cut) for n, cut in est]  # only "> max_length" matters below
            source = f"estimated ({args.tokens_per_word} tokens/word)"
        token_ids[name] = ids
        cut_share = sum(c > max_length for c in counts) / len(counts)
        print(
            f"{name}: {source}: {describe_lengths([len(x) for x in ids], max_length)}; "
            f"truncated {cut_share:.0%}"
        )

    results: list[dict[str, Any]] = []
    cfg = model.config

    def record(variant: str, name: str, times: list[float], padded_tokens: int) -> None:
        ids = token_ids[name]
        real = sum(len(x) for x in ids)
        best = statistics.median(times)
        # matrix FLOPs actually run: every padded token, attention over the mean padded width
        flops = padded_tokens * flops_per_token(cfg, round(padded_tokens / len(ids)))
        row = {
            "variant": variant,
            "dataset": name,
            "captions": len(ids),
            "seconds": best,
            "captions_per_s": len(ids) / best,
            "real_tokens_per_s": real / best,
            "padded_tokens": padded_tokens,
            "tflops": flops / best / 1e12,
        }
        results.append(row)
        print(
            f"  {variant:<22} {name:<6} {row['captions_per_s']:9.1f} captions/s  "
            f"{row['tflops']:7.1f} TFLOP/s (padded tokens {padded_tokens})",
            flush=True,
        )

    def run_variant(variant: str, label: str, budget: int):
        encoder = None
        if variant == "trim":
            encoder = make_encoder("transformers", budget)
        elif variant == "fused":
            encoder = make_encoder("fused", budget)
        elif variant == "fused+compile":
            encoder = make_encoder("fused", budget, compile_=True)
        elif variant != "plain":
            raise ValueError(f"unknown variant {variant!r}")
        for name in args.datasets:
            ids = token_ids[name]
            if encoder is None:
                plain_pass(model, ids[: args.plain_batch], max_length, args.plain_batch, device)  # warm-up
                times = time_passes(
                    partial(plain_pass, model, ids, max_length, args.plain_batch, device),
                    device,
                    args.repeats,
                )
                record(label, name, times, len(ids) * max_length)
                continue
            encoder.encode_ids(ids)  # warm-up (and compilation) over the whole length distribution
            err = check_agreement(model, encoder, ids, max_length, device)
            before = encoder.stats.padded_tokens
            times = time_passes(partial(encoder.encode_ids, ids), device, args.repeats)
            record(label, name, times, (encoder.stats.padded_tokens - before) // args.repeats)
            results[-1]["rel_error_vs_padded"] = err
            print(f"  {'':<22} {name:<6} rel. error vs padded-to-{max_length}: {err:.2e}", flush=True)
        return encoder

    print(f"plain forward: transformers, attention {model.config._attn_implementation!r}")
    last_encoder = None
    for spec in args.variants:
        variant, _, budget_text = spec.partition("@")
        budget = int(budget_text) if budget_text else args.token_budget
        label = variant if variant == "plain" else f"{variant}@{budget}"
        t_setup = time.perf_counter()
        try:
            last_encoder = run_variant(variant, label, budget) or last_encoder
        except Exception as exc:  # one failing variant must not hide the others' figures
            print(f"  {label}: FAILED: {type(exc).__name__}: {exc}", flush=True)
        print(f"  ({label}: {time.perf_counter() - t_setup:.1f}s including warm-up)", flush=True)

    if args.profile and last_encoder is not None:
        profile_pass(last_encoder, token_ids[args.datasets[0]], device, args.profile)

    print("\nsummary (median of repeats; ratio against plain on the same data set):")
    base = {r["dataset"]: r["captions_per_s"] for r in results if r["variant"] == "plain"}
    for r in results:
        ratio = r["captions_per_s"] / base[r["dataset"]] if r["dataset"] in base else float("nan")
        peak = f"  {100 * r['tflops'] / args.peak_tflops:5.1f}% of peak" if args.peak_tflops else ""
        print(
            f"{r['variant']:<24} {r['dataset']:<6} {r['captions_per_s']:9.1f} captions/s  x{ratio:5.2f}  "
            f"{r['tflops']:7.1f} TFLOP/s{peak}"
        )
    if args.json:
        args.json.write_text(json.dumps({"device": device, "results": results}, indent=2))
    if tmp is not None:
        tmp.cleanup()


class _IdsOnly:
    """Stands in for a tokenizer when token ids are synthesized (T5's pad 0 and </s> 1)."""

    pad_token_id = 0
    eos_token_id = 1


if __name__ == "__main__":
    main()
