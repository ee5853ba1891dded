"""End-to-end pipeline on CPU with tiny models against each stage alone (overlap check).

    python benchmarks/pipeline_cpu.py [--images N] [--shard-size 10] [--tokens 32]

Runs `recaption run` (Ray executor, stages overlapping shard by shard) on N web images with their
captions, then each stage alone on the same input (caption; nouns and encode over those captions).
With overlap the end-to-end images/s should approach the slowest single stage's. Every figure is
a whole run's wall time (Ray start and model loading included, the same way for each).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, table

sys.path.insert(0, str(ROOT))

from recaption.captioner.tiny import build_tiny_llava
from recaption.encoder.tiny_t5 import build_tiny_t5
from recaption.encoder.tiny_vae import build_tiny_vae
from recaption.pipeline.config import load_config
from recaption.pipeline.run import run_pipeline
from tests.pipeline.conftest import make_webdataset, tiny_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--shard-size", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=32, help="tokens generated per image (min = max)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="recaption-bench-"))
    try:
        models = {
            "llava": build_tiny_llava(tmp / "llava"),
            "t5": build_tiny_t5(tmp / "t5"),
            "vae": build_tiny_vae(str(tmp / "vae")),
        }
        src = make_webdataset(tmp / "wds", n=args.images, per_shard=args.shard_size)

        def cfg(out: Path, **enabled: bool) -> dict:
            c = tiny_config(src, out, models, executor="ray")
            c["caption"].update(max_new_tokens=args.tokens, min_new_tokens=args.tokens, batch_size=8)
            for stage in ("caption", "nouns", "encode"):
                c[stage]["enabled"] = enabled.get(stage, True)
            return c

        def timed(c: dict) -> tuple[float, int]:
            t0 = time.perf_counter()
            r = run_pipeline(load_config(c), progress=False)
            assert r.ok(), r.to_dict()
            return time.perf_counter() - t0, max(s.rows for s in r.summaries.values())

        t_all, n = timed(cfg(tmp / "all"))
        t_cap, _ = timed(cfg(tmp / "alone", nouns=False, encode=False))
        t_nouns, _ = timed(cfg(tmp / "alone", caption=False, encode=False))
        t_enc, _ = timed(cfg(tmp / "alone", caption=False, nouns=False))
        rows = [
            ["caption alone", f"{t_cap:.1f}", f"{n / t_cap:.2f}"],
            ["nouns alone", f"{t_nouns:.1f}", f"{n / t_nouns:.2f}"],
            ["encode alone (T5 + VAE at 256)", f"{t_enc:.1f}", f"{n / t_enc:.2f}"],
            ["whole pipeline, stages overlapping", f"{t_all:.1f}", f"{n / t_all:.2f}"],
        ]
        slowest = max(t_cap, t_nouns, t_enc)
        print(table(rows, ["run", "seconds", "images/s"]))
        print(
            f"\n{n} images, {args.tokens} tokens each. End to end / slowest stage alone: "
            f"{(n / t_all) / (n / slowest):.2f} (1.00 = perfect overlap); "
            f"stages one after another would take {(t_cap + t_nouns + t_enc) / t_all:.2f}x as long"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
