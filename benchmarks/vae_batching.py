"""VAE batching on a realistic mix of image sizes: per-call batches vs per-bucket queues.

    python benchmarks/vae_batching.py [--images DIR] [--resolutions 256,512,1024] [--batch-rows 64]
        [--timed-resolutions 256]

The encode stage reads rows in batches of ``--batch-rows``; the baseline splits each batch by
resolution and bucket and encodes it alone (the old path, ``vae_queues=False``), the new path
keeps per-(resolution, bucket) queues across batches, flushed at the shard's end
(:mod:`recaption.encoder.vae_queue`). Images: the shared web images (``web_pairs``), or a generated
mix of web-like sizes when absent; the shard is ``--shard-rows`` rows (the images repeated).
Two parts, both modes in the same run:

1. batching at ``--resolutions`` with the default batch sizes (8 images at 1024², by pixels): the
   VAE forward pass is replaced by a stub, so this counts passes, mean images per pass, the fill
   (images over what a full batch of that bucket holds) and distinct shapes, quickly on a CPU;
2. images/s with the tiny random-weight VAE on the CPU at ``--timed-resolutions`` (the real
   forward passes; a shared CPU's figures are noisy, and a GPU's gain from full batches is
   larger and not measured here: see vae_gpu.py).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import SHARED_DATA, table

from recaption.encoder.tiny_vae import build_tiny_vae
from recaption.encoder.vae import ImageEncoder, VaeConfig
from recaption.encoder.vae_queue import BucketQueues


def load_images(folder: Path, n: int) -> list[Any]:
    """The web images (RGB), or a generated mix of web-like sizes when the folder is absent."""
    from PIL import Image

    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if files:
        out = []
        for p in files[:n]:
            with Image.open(p) as im:
                out.append(im.convert("RGB"))
        return out
    print(f"{folder} absent: generating {n} images of web-like sizes")
    rng = np.random.default_rng(0)
    sizes = [(640, 480), (480, 640), (800, 533), (1024, 768), (500, 500), (1280, 720), (600, 400), (400, 600)]
    out = []
    for _ in range(n):
        w, h = sizes[rng.integers(len(sizes))]
        w, h = int(w * rng.uniform(0.6, 1.2)), int(h * rng.uniform(0.6, 1.2))
        out.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    return out


def run(enc: ImageEncoder, images: list[Any], batch_rows: int, queues: bool, stub: bool) -> dict[str, Any]:
    """Encode ``images`` in calls of ``batch_rows``; forward-pass statistics and images/s."""
    import torch

    passes: list[tuple[int, tuple[int, ...]]] = []
    inner = enc.encode_arrays

    def counted(pixels: np.ndarray, to_cpu: bool = True) -> Any:
        passes.append((len(pixels), pixels.shape[1:3]))
        if stub:
            b, h, w, _ = pixels.shape
            return torch.zeros(b, 2 * enc.latent_channels, h // 8, w // 8, dtype=torch.float16)
        return inner(pixels, to_cpu=to_cpu)

    enc.encode_arrays = counted  # type: ignore[method-assign]
    sizes = [im.size for im in images]
    capacity = 0
    t0 = time.perf_counter()
    try:
        if queues:
            q = BucketQueues(enc)
            for i, (im, size) in enumerate(zip(images, sizes, strict=True)):
                q.add(i, im, size)
            q.flush()
            capacity = q.stats.capacity
        else:
            for s in range(0, len(images), batch_rows):
                enc.encode_all(images[s : s + batch_rows], sizes[s : s + batch_rows])
    finally:
        enc.encode_arrays = inner  # type: ignore[method-assign]
    dt = time.perf_counter() - t0
    if not queues:
        capacity = sum(enc.config.images_per_batch(h, w) for _, (h, w) in passes)
    n = sum(b for b, _ in passes)
    return {
        "passes": len(passes),
        "mean": n / len(passes),
        "fill": n / capacity,
        "small": sum(b < 4 for b, _ in passes) / len(passes),
        "shapes": len({s for _, s in passes}),
        "img_s": len(images) / dt,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=SHARED_DATA / "web_pairs" / "images")
    ap.add_argument(
        "--shard-rows",
        type=int,
        default=1024,
        help="rows of the shard encoded (the images repeated to reach it; queues flush at its end)",
    )
    ap.add_argument("--resolutions", default="256,512,1024")
    ap.add_argument("--timed-resolutions", default="256")
    ap.add_argument("--batch-rows", type=int, default=64, help="the stage's rows per encode call")
    args = ap.parse_args()
    distinct = load_images(args.images, args.shard_rows)
    images = [distinct[i % len(distinct)] for i in range(args.shard_rows)]
    tmp = Path(tempfile.mkdtemp(prefix="recaption-bench-"))
    try:
        vae = build_tiny_vae(str(tmp / "vae"))
        rows = []
        for part, res, stub in (
            ("batching", args.resolutions, True),
            ("tiny VAE", args.timed_resolutions, False),
        ):
            resolutions = tuple(int(r) for r in res.split(","))
            enc = ImageEncoder(VaeConfig(model=vae, device="cpu", resolutions=resolutions)).load()
            base = run(enc, images, args.batch_rows, queues=False, stub=stub)
            new = run(enc, images, args.batch_rows, queues=True, stub=stub)
            enc.close()
            for name, m in (("per-call (baseline)", base), ("per-bucket queues", new)):
                rows.append(
                    [
                        f"{part} @ {res}",
                        name,
                        m["passes"],
                        f"{m['mean']:.2f}",
                        f"{m['fill']:.3f}",
                        f"{100 * m['small']:.0f}%",
                        m["shapes"],
                        f"{m['img_s']:.1f}" if not stub else "-",
                        f"{m['img_s'] / base['img_s']:.2f}" if not stub else "-",
                    ]
                )
        head = ["part", "mode", "passes", "img/pass", "fill", "<4 img", "shapes", "img/s", "ratio"]
        print(table(rows, head))
        print(
            f"\n{len(distinct)} distinct images in a shard of {len(images)} rows, calls of "
            f"{args.batch_rows} rows; fill = images per pass / what a full pass of that bucket holds"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
