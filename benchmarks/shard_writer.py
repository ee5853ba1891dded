"""Shard writer throughput: ``ShardOutput`` (streamed, temporary name, renamed, manifest and stats)
against one plain ``pyarrow.parquet.write_table`` call on the same rows.

    python benchmarks/shard_writer.py [--rows 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import best_of, pin_one_core, table

from recaption.readers.base import InputShard
from recaption.shards.layout import StageDir
from recaption.shards.writer import ShardOutput


def caption_rows(n: int) -> tuple[pa.Schema, list[dict]]:
    rng = np.random.default_rng(0)
    words = [f"word{i}" for i in range(3000)]
    schema = pa.schema(
        [("key", pa.string()), ("image_uri", pa.string()), ("caption", pa.string()), ("tokens", pa.int32())]
    )
    rows = [
        {
            "key": f"sa_{i}",
            "image_uri": f"s3://bucket/sa1b/sa_{i // 1000:06d}.tar",
            "caption": " ".join(rng.choice(words, 110)),
            "tokens": 150,
        }
        for i in range(n)
    ]
    return schema, rows


def tensor_rows(n: int) -> tuple[pa.Schema, list[dict]]:
    rng = np.random.default_rng(0)
    blob = rng.standard_normal(8 * 64 * 128).astype(np.float16).tobytes()  # 128 KiB, a 512px latent
    schema = pa.schema([("key", pa.string()), ("vae_512", pa.binary())])
    return schema, [{"key": f"k{i}", "vae_512": blob} for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    pin_one_core()
    tmp = tempfile.mkdtemp(prefix="recaption-bench-")
    out_rows = []
    try:
        for name, (schema, rows), compression in (
            ("captions (110 words)", caption_rows(args.rows), "zstd"),
            ("tensors (128 KiB fp16)", tensor_rows(args.rows // 4), "none"),
        ):
            tbl = pa.Table.from_pylist(rows, schema=schema)
            counter = iter(range(10**9))

            def plain(tbl: pa.Table = tbl, compression: str = compression, counter=counter) -> None:
                pq.write_table(
                    tbl, os.path.join(tmp, f"plain-{next(counter)}.parquet"), compression=compression
                )

            def ours(
                schema: pa.Schema = schema, rows: list = rows, compression: str = compression, counter=counter
            ) -> None:
                d = StageDir(os.path.join(tmp, f"ours-{next(counter)}"))
                out = ShardOutput(
                    d, InputShard(index=0, uri="x"), schema, stage="bench", compression=compression
                )
                for i in range(0, len(rows), 256):
                    out.write(rows[i : i + 256])
                out.commit()

            t_plain = best_of(plain, args.repeats)
            t_ours = best_of(ours, args.repeats)
            mb = tbl.nbytes / 1e6
            out_rows.append(
                [
                    name,
                    str(len(rows)),
                    f"{len(rows) / t_plain:,.0f} rows/s ({mb / t_plain:,.0f} MB/s)",
                    f"{len(rows) / t_ours:,.0f} rows/s ({mb / t_ours:,.0f} MB/s)",
                    f"{t_plain / t_ours:.2f}",
                ]
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        table(out_rows, ["rows", "n", "plain write_table", "ShardOutput (from dicts, commit)", "ours/plain"])
    )


if __name__ == "__main__":
    main()
