"""The caption stage on CPU with the tiny LLaVA, against decoding the same files alone.

    python benchmarks/caption_cpu.py [--images DIR] [--max-new-tokens 16] [--batch-size 8]

With a tiny model the model's own cost is small, so the gap between the two figures is the
overhead of everything around it: reading, decoding and resizing, the processor, prompt rendering,
the prefetch threads, shard writing and the manifest.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import SHARED_DATA, table

from recaption.captioner.model import CaptionerConfig
from recaption.captioner.stage import CaptionStage
from recaption.captioner.tiny import build_tiny_llava
from recaption.images.decode import decode_image
from recaption.readers import open_source
from recaption.runner import run_local


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=SHARED_DATA / "web_pairs" / "images")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    files = sorted(p for p in args.images.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not files:
        raise SystemExit(f"no images in {args.images}; pass --images DIR")
    tmp = Path(tempfile.mkdtemp(prefix="recaption-bench-"))
    try:
        model = build_tiny_llava(tmp / "tiny-llava")
        t0 = time.perf_counter()
        for p in files:
            decode_image(p.read_bytes())
        t_decode = time.perf_counter() - t0

        cfg = CaptionerConfig(
            model=model,
            device="cpu",
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            min_new_tokens=args.max_new_tokens,
        )
        stage = CaptionStage(source=open_source(str(args.images), shard_size=50), model=cfg)
        stage.setup()  # model loading is not part of the throughput
        t0 = time.perf_counter()
        summary = run_local(stage, str(tmp / "captions"), progress=False)
        t_stage = time.perf_counter() - t0
        gen = sum(s.get("captioner", {}).get("generate_seconds", 0.0) for s in summary.done)
        n = len(files)
        around = t_stage - gen  # everything but the model's generate()
        print(
            table(
                [
                    ["decode alone (full size)", f"{n / t_decode:.1f}", "1.00"],
                    [
                        f"caption stage, tiny LLaVA, {args.max_new_tokens} tokens, batch {args.batch_size}",
                        f"{summary.rows / t_stage:.1f}",
                        f"{(summary.rows / t_stage) / (n / t_decode):.2f}",
                    ],
                    [
                        "caption stage without generate() time (reading, decoding, processor, writing)",
                        f"{summary.rows / around:.1f}",
                        f"{(summary.rows / around) / (n / t_decode):.2f}",
                    ],
                ],
                ["what", "images/s", "ratio to decode"],
            )
        )
        print(f"\n{n} images; generate() took {gen:.1f}s of the stage's {t_stage:.1f}s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
