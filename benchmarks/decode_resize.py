"""Decode + resize throughput on one core, with and without JPEG draft mode, on the real photos.

    python benchmarks/decode_resize.py [--images DIR ...] [--repeats 3]

Targets: the captioner's input (short side 336, LLaVA-1.5's resolution), PixArt's captioning
resize (short ≤ 400, long ≤ 800), and the VAE's 512 and 1024 buckets (resize to cover, as
PixArt's training does). The baseline is a full-size decode followed by the same resize.
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

from _common import SHARED_DATA, best_of, pin_one_core, table
from PIL import Image

from recaption.images.decode import decode_image


def cover_size(w: int, h: int, tw: int, th: int) -> tuple[int, int]:
    s = max(tw / w, th / h)
    return max(tw, math.ceil(w * s)), max(th, math.ceil(h * s))


TARGETS = {
    "short side 336 (LLaVA input)": lambda w, h: cover_size(w, h, 336, 336),
    "short 400 / long 800 (PixArt captioning)": lambda w, h: (
        round(w * min(1, 400 / min(w, h), 800 / max(w, h))),
        round(h * min(1, 400 / min(w, h), 800 / max(w, h))),
    ),
    "cover 512x512 (VAE 512)": lambda w, h: cover_size(w, h, 512, 512),
    "cover 1024x1024 (VAE 1024)": lambda w, h: cover_size(w, h, 1024, 1024),
}


def baseline(data: list[bytes], target) -> None:
    for b in data:
        img = Image.open(io.BytesIO(b)).convert("RGB")
        img.resize(target(*img.size), Image.Resampling.BICUBIC)


def ours(data: list[bytes], target) -> None:
    for b in data:
        d = decode_image(b, draft_min_size=target)
        d.image.resize(target(d.width, d.height), Image.Resampling.BICUBIC)


def ours_no_draft(data: list[bytes], target) -> None:
    for b in data:
        d = decode_image(b)
        d.image.resize(target(d.width, d.height), Image.Resampling.BICUBIC)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--images", nargs="*", type=Path, default=[SHARED_DATA / "sam", SHARED_DATA / "web_pairs" / "images"]
    )
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    pin_one_core()
    sets = {}
    for folder in args.images:
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        if files:
            sets[folder.name] = [p.read_bytes() for p in files]
    if not sets:
        raise SystemExit(f"no JPEG images found in {args.images}; pass --images DIR")
    rows = []
    for name, data in sets.items():
        sizes = [Image.open(io.BytesIO(b)).size for b in data]
        mp = sum(w * h for w, h in sizes) / len(sizes) / 1e6
        for tname, target in TARGETS.items():
            t_base = best_of(lambda: baseline(data, target), args.repeats)  # noqa: B023
            t_nodraft = best_of(lambda: ours_no_draft(data, target), args.repeats)  # noqa: B023
            t_ours = best_of(lambda: ours(data, target), args.repeats)  # noqa: B023
            n = len(data)
            rows.append(
                [
                    f"{name} ({n} imgs, {mp:.2f} MP avg)",
                    tname,
                    f"{n / t_base:.1f}",
                    f"{n / t_nodraft:.1f}",
                    f"{n / t_ours:.1f}",
                    f"{t_base / t_ours:.2f}x",
                ]
            )
    print(
        table(
            rows,
            [
                "images",
                "target",
                "baseline img/s",
                "decode_image (no draft) img/s",
                "decode_image + draft img/s",
                "draft vs baseline",
            ],
        )
    )


if __name__ == "__main__":
    main()
