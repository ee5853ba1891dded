"""The encode stage on CPU with tiny T5 and VAE models, against reading and decoding alone.

    python benchmarks/encode_cpu.py [--images DIR] [--resolutions 256,512]

Builds caption shards for the images (index-like rows with a fixed caption, no VLM), then runs
the encode stage over them and reports images/s and MB/s written; the baseline is reopening every
image through its reference and decoding it, which the stage must also do.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import SHARED_DATA, table

from recaption.columns import sample_row
from recaption.encoder.stage import EncodeStage, encode_configs
from recaption.encoder.tiny_t5 import build_tiny_t5
from recaption.encoder.tiny_vae import build_tiny_vae
from recaption.images.decode import decode_image
from recaption.readers import open_source
from recaption.readers.base import Sample
from recaption.readers.refs import ImageOpener
from recaption.runner import run_local
from recaption.runner.base import prepare_output
from recaption.shards.writer import ShardOutput
from recaption.stage import Stage


class _FixedCaptions(Stage):
    """Caption shards with one fixed dense caption per image (no model): the encode stage's input."""

    name = "caption"

    def __init__(self, src, caption: str) -> None:
        self.src, self.caption = src, caption

    def schema(self):
        from recaption.captioner.stage import caption_schema

        return caption_schema()

    def fingerprint(self):
        return {"root": self.src.root}

    def shards(self):
        return self.src.shards()

    def process_shard(self, shard, out: ShardOutput):
        rows = []
        for s in self.src.read_shard(shard):
            if isinstance(s, Sample):
                d = decode_image(s.image_bytes())
                s.width, s.height = d.width, d.height
                rows.append(sample_row(s) | {"dense_caption": self.caption, "finish_reason": "stop"})
        out.write(rows)
        return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=SHARED_DATA / "web_pairs" / "images")
    ap.add_argument("--resolutions", default="256,512")
    args = ap.parse_args()
    res = tuple(int(r) for r in args.resolutions.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="recaption-bench-"))
    try:
        t5, vae = build_tiny_t5(tmp / "t5"), build_tiny_vae(str(tmp / "vae"))
        src = open_source(str(args.images), shard_size=50)
        caption = "The image shows a red car parked on a quiet street, photographed in warm evening light."
        caps = tmp / "captions"
        stage0 = _FixedCaptions(src, caption)
        prepare_output(stage0, str(caps), stage0.shards())
        run_local(stage0, str(caps), progress=False)
        import pandas as pd

        rows = pd.read_parquet(caps).to_dict("records")
        opener = ImageOpener()
        from recaption.readers.base import ImageRef

        t0 = time.perf_counter()
        for r in rows:
            ref = ImageRef.from_columns(r)
            assert ref is not None
            decode_image(opener.read(ref))
        t_read = time.perf_counter() - t0

        text, image = encode_configs(
            "alpha", t5_model=t5, vae_model=vae, resolutions=res, device="cpu", t5_hidden_size=32
        )
        stage = EncodeStage(captions=str(caps), text=text, image=image)
        stage.setup()
        t0 = time.perf_counter()
        summary = run_local(stage, str(tmp / "features"), progress=False)
        t_enc = time.perf_counter() - t0
        mb = sum(int(s.get("data_bytes", 0)) for s in summary.done) / 1e6
        n = summary.rows
        print(
            table(
                [
                    ["reopen + decode alone", f"{len(rows) / t_read:.1f}", "-", "1.00"],
                    [
                        f"encode stage (tiny T5 + tiny VAE at {args.resolutions})",
                        f"{n / t_enc:.1f}",
                        f"{mb / t_enc:.1f}",
                        f"{(n / t_enc) / (len(rows) / t_read):.2f}",
                    ],
                ],
                ["what", "images/s", "MB/s written", "ratio"],
            )
        )
        print(f"\n{n} images encoded, {mb:.1f} MB of feature shards")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
