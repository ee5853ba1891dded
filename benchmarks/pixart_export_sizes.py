"""Bytes per sample of ``export-pixart``, per folder, before and after issue 11's storage changes.

Synthetic feature shards at the real sizes (T5-XXL hidden 4096; PixArt-α: 120 tokens, PixArt-Σ: 300;
latents of a 1024 bucket, 4 channels, mean ‖ std stored float16), exported with
:func:`recaption.pixart.export.export_pixart` (``layouts=internal,sigma``, square latents, and with
and without ``compress``). The "before" rows are the previous export's formats computed on the same
rows in the same run: T5 float32 padded to the training length with an int64 mask in every layout,
latents float32 (:class:`recaption.pixart.export.TextFormat` with those settings).

Token counts: each sample's caption length is drawn uniformly from ``--min-tokens``..max_length
(dense LLaVA captions often reach α's 120). Values are Gaussian noise, so ``--compress`` figures here
are what zlib does with incompressible float16 mantissas: real T5 features compress somewhat better,
the uncompressed figures are exact for any content.

Run: ``PYTHONPATH=. python benchmarks/pixart_export_sizes.py [--samples 24] [--min-tokens 40]``
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import pyarrow as pa

from recaption.encoder import buckets as B
from recaption.encoder import schema as S
from recaption.pixart.export import TextFormat, _npy_bytes, export_pixart

HIDDEN = 4096
RES = 1024
SIZES = [(1024, 768), (768, 1024), (1000, 1000), (1600, 900), (900, 1600), (1200, 800)]


def write_shard(folder: str, preset: str, max_length: int, n: int, min_tokens: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    meta = S.FeatureMetadata(
        preset=preset,
        text=S.TextMeta("t5-v1_1-xxl", None, HIDDEN, "float16", max_length, preset == "alpha", ["dense"]),
        image=S.ImageMeta(
            "vae", None, 4, 0.18215 if preset == "alpha" else 0.13025, "float16", [RES], True, square=True
        ),
    )
    rows, lengths = [], []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        k = int(rng.integers(min_tokens, max_length + 1))
        lengths.append(k)
        row = {
            "key": f"img{i:04d}",
            "image_uri": "",
            "image_member": "",
            "image_offset": -1,
            "image_length": -1,
        }
        row |= {"width": w, "height": h}
        feats = rng.standard_normal((k, HIDDEN)).astype(np.float16)
        row |= S.text_row("dense", feats, text=f"caption {i}", truncated=k == max_length)
        bucket = B.closest_bucket(h, w, RES)
        box = B.crop_for_bucket(h, w, bucket)
        lat = rng.standard_normal((8, bucket.height // 8, bucket.width // 8)).astype(np.float16)
        row |= S.image_row(RES, lat, bucket_hw=(bucket.height, bucket.width), ratio=bucket.ratio,
                           crop=box.as_list(), resized_hw=(box.resized_h, box.resized_w))  # fmt: skip
        sq = B.crop_for_square(h, w, RES)
        row |= S.square_row(RES, rng.standard_normal((8, RES // 8, RES // 8)).astype(np.float16),
                            crop=sq.as_list(), resized_hw=(sq.resized_h, sq.resized_w))  # fmt: skip
        rows.append(row)
    os.makedirs(folder, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=S.feature_schema(metadata=meta))
    S.write_feature_table(os.path.join(folder, "part-00000.parquet"), table)
    return lengths


def folder_bytes(root: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for dirpath, _, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        total = sum(os.path.getsize(os.path.join(dirpath, f)) for f in files if f.endswith((".npz", ".npy")))
        if total:
            out[rel] = total
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--min-tokens", type=int, default=40)
    args = ap.parse_args()
    n = args.samples
    print(f"bytes per sample (mean over {n}), T5 hidden {HIDDEN}, latents at {RES}\n")
    print(
        f"{'preset':6} {'folder':44} {'before':>10} {'after':>10} {'after+compress':>15} {'after/before':>13}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for preset, max_length, layout in (("alpha", 120, "internal"), ("sigma", 300, "sigma")):
            feats = os.path.join(tmp, preset)
            lengths = write_shard(feats, preset, max_length, n, args.min_tokens, seed=1)
            after = {}
            for compress in (False, True):
                dest = os.path.join(tmp, f"{preset}-{compress}", "InternData")
                summary = export_pixart(feats, dest, layouts=(layout,), compress=compress)
                assert summary.rows == n
                after[compress] = folder_bytes(dest)
            # before: float32 features padded to max_length + int64 mask; float32 latents
            rng = np.random.default_rng(2)
            t5_before = np.mean(
                [
                    len(TextFormat(np.float32, np.int64, True).npz(
                        rng.standard_normal((k, HIDDEN)).astype(np.float16), max_length, False))
                    for k in lengths
                ]
            )  # fmt: skip
            totals = [0.0, 0.0, 0.0]
            for folder in sorted(after[False]):
                a, c = after[False][folder] / n, after[True][folder] / n
                if "caption" in folder:
                    b = t5_before
                elif "noflip" in folder or folder.endswith("resolution_new"):
                    b = len(_npy_bytes(np.zeros((8, RES // 8, RES // 8), np.float32)))
                else:
                    buckets = [
                        B.closest_bucket(h, w, RES) for w, h in (SIZES[i % len(SIZES)] for i in range(n))
                    ]
                    b = np.mean(
                        [
                            len(_npy_bytes(np.zeros((8, k.height // 8, k.width // 8), np.float32)))
                            for k in buckets
                        ]
                    )
                totals = [x + y for x, y in zip(totals, (b, a, c), strict=True)]
                print(f"{preset:6} {folder:44} {b:>10,.0f} {a:>10,.0f} {c:>15,.0f} {a / b:>13.2f}")
            b, a, c = totals
            print(f"{preset:6} {'all of the above':44} {b:>10,.0f} {a:>10,.0f} {c:>15,.0f} {a / b:>13.2f}")
            print(f"{'':6} (mean caption length {np.mean(lengths):.0f} of {max_length} tokens)\n")


if __name__ == "__main__":
    main()
