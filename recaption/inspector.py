"""``recaption inspect``: what a source holds, before any GPU time is spent.

Reads every sample (or the first ``limit``), decodes each image (JPEG draft mode keeps this cheap:
the whole entropy-coded stream is still read, so truncation is caught), and reports counts, image
sizes and aspect ratios, caption lengths, examples, and every sample that fails, with its reason.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from recaption.images.decode import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    DecodeError,
    decode_image,
    extreme_aspect_reason,
    is_extreme_aspect,
)
from recaption.readers.base import SEVERITY_WARNING, Failure, Sample, Source
from recaption.shards.manifest import reason_category

# Height/width bins: PixArt's bucket range is 0.25 .. 4.0; it drops taller images and crops wider ones.
ASPECT_BINS: tuple[tuple[str, float, float], ...] = (
    ("< 1:4 (cropped hard by PixArt)", 0.0, 0.25),
    ("1:4 – 1:2", 0.25, 0.5),
    ("1:2 – 4:5 (landscape)", 0.5, 0.8),
    ("4:5 – 5:4 (near square)", 0.8, 1.25),
    ("5:4 – 2:1 (portrait)", 1.25, 2.0),
    ("2:1 – 4:1", 2.0, 4.0 + 1e-9),
    ("> 4:1 (dropped by PixArt)", 4.0 + 1e-9, float("inf")),
)
MP_BINS: tuple[tuple[str, float, float], ...] = (
    ("< 0.065 MP (< 256²)", 0.0, 0.065536),
    ("0.065 – 0.26 MP (< 512²)", 0.065536, 0.262144),
    ("0.26 – 1.05 MP (< 1024²)", 0.262144, 1.048576),
    ("1.05 – 4.2 MP (< 2048²)", 1.048576, 4.194304),
    ("≥ 4.2 MP", 4.194304, float("inf")),
)


def _bin(value: float, bins: tuple[tuple[str, float, float], ...]) -> str:
    for name, lo, hi in bins:
        if lo <= value < hi:
            return name
    return bins[-1][0]


def _dist(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)

    def q(p: float) -> float:
        return float(s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))])

    return {
        "min": float(s[0]),
        "p05": q(0.05),
        "median": float(statistics.median(s)),
        "mean": round(float(statistics.fmean(s)), 2),
        "p95": q(0.95),
        "max": float(s[-1]),
    }


@dataclass
class InspectOptions:
    limit: int | None = None  # samples to read (None: all)
    decode: bool = True  # decode images (catches truncation); False reads headers only
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    examples: int = 5
    max_failures_listed: int = 50


def inspect_source(source: Source, options: InspectOptions | None = None) -> dict[str, Any]:
    """A JSON-able report of what ``source`` holds."""
    opt = options or InspectOptions()
    t0 = time.time()
    shards = source.shards()
    widths: list[float] = []
    heights: list[float] = []
    aspect = Counter[str]()
    megapixels = Counter[str]()
    formats = Counter[str]()
    modes = Counter[str]()
    cap_words: list[float] = []
    cap_chars: list[float] = []
    n_ok = n_caption = n_empty_caption = n_extreme = 0
    failures: list[Failure] = []
    examples: list[dict[str, Any]] = []
    keys_seen: dict[str, int] = {}
    n_read = 0
    stop = False
    for shard in shards:
        if stop:
            break
        for item in source.read_shard(shard):
            if isinstance(item, Failure):
                failures.append(item)
                continue
            if opt.limit is not None and n_read >= opt.limit:
                stop = True
                break
            n_read += 1
            s: Sample = item
            for warning in s.warnings:
                failures.append(Failure.for_sample(s, "read", warning, SEVERITY_WARNING))
            if s.key in keys_seen and keys_seen[s.key] != shard.index:
                failures.append(
                    Failure.for_sample(
                        s,
                        "inspect",
                        f"duplicate key {s.key!r}: also in shard {keys_seen[s.key]}",
                        SEVERITY_WARNING,
                    )
                )
            keys_seen.setdefault(s.key, shard.index)
            if source.has_images:
                try:
                    data = s.image_bytes()
                    if opt.decode:
                        dec = decode_image(
                            data, max_pixels=opt.max_pixels, min_side=opt.min_side, draft_min_size=(64, 64)
                        )
                        w, h, fmt, mode = dec.width, dec.height, dec.format, dec.mode
                    else:
                        from recaption.images.decode import probe_image

                        info = probe_image(data, max_pixels=opt.max_pixels, min_side=opt.min_side)
                        w, h, fmt, mode = info.width, info.height, info.format, info.mode
                except DecodeError as e:
                    failures.append(Failure.for_sample(s, "decode", e.reason))
                    continue
                except Exception as e:  # an unreadable reference
                    failures.append(
                        Failure.for_sample(s, "read", getattr(e, "reason", f"{type(e).__name__}: {e}"))
                    )
                    continue
                s.width, s.height = w, h
                widths.append(w)
                heights.append(h)
                formats[fmt or "?"] += 1
                modes[mode] += 1
                aspect[_bin(h / w, ASPECT_BINS)] += 1
                megapixels[_bin(w * h / 1e6, MP_BINS)] += 1
                if is_extreme_aspect(w, h):
                    n_extreme += 1
                    failures.append(
                        Failure.for_sample(
                            s,
                            "inspect",
                            f"{extreme_aspect_reason(w, h)} (kept here, flagged)",
                            SEVERITY_WARNING,
                        )
                    )
            n_ok += 1
            if s.caption is not None:
                n_caption += 1
                if not s.caption.strip():
                    n_empty_caption += 1
                cap_words.append(len(s.caption.split()))
                cap_chars.append(len(s.caption))
            if len(examples) < opt.examples:
                examples.append(
                    {
                        "key": s.key,
                        "width": s.width,
                        "height": s.height,
                        "caption": (s.caption or "")[:200],
                        "ref": s.ref.describe() if s.ref else "",
                    }
                )
    errors = [f for f in failures if f.severity != SEVERITY_WARNING]
    warnings = [f for f in failures if f.severity == SEVERITY_WARNING]
    return {
        "source": source.root,
        "kind": source.kind,
        "has_images": source.has_images,
        "shards": len(shards),
        "samples_read": n_read,
        "samples_ok": n_ok,
        "limited": stop,
        "errors": len(errors),
        "warnings": len(warnings),
        "error_reasons": dict(Counter(reason_category(f.reason) for f in errors).most_common()),
        "warning_reasons": dict(Counter(reason_category(f.reason) for f in warnings).most_common()),
        "images": {
            "width": _dist(widths),
            "height": _dist(heights),
            "aspect_ratio_hw": {name: aspect.get(name, 0) for name, _, _ in ASPECT_BINS},
            "megapixels": {name: megapixels.get(name, 0) for name, _, _ in MP_BINS},
            "extreme_aspect": n_extreme,
            "formats": dict(formats.most_common()),
            "modes": dict(modes.most_common()),
        }
        if source.has_images
        else None,
        "captions": {
            # a folder's caption manifests (metadata.jsonl, captions.json...) as file (file → text column)
            "from": [m.describe() for m in getattr(source, "manifests", ())],
            "with_caption": n_caption,
            "empty": n_empty_caption,
            "words": _dist(cap_words),
            "chars": _dist(cap_chars),
        },
        "examples": examples,
        "failures": [
            {
                "key": f.key,
                "stage": f.stage,
                "severity": f.severity,
                "reason": f.reason,
                "uri": f.uri,
                "member": f.member,
            }
            for f in (errors + warnings)[: opt.max_failures_listed]
        ],
        "seconds": round(time.time() - t0, 3),
    }
