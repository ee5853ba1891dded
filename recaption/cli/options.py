"""Option declarations shared by several commands."""

from __future__ import annotations

from types import SimpleNamespace

import typer

source_options = SimpleNamespace(
    kind=typer.Option(
        "auto", "--kind", help="Source layout: auto, sam, webdataset, parquet, table, folder, captions."
    ),
    shard_size=typer.Option(
        None,
        "--shard-size",
        help="Samples per input shard: loose files (default 1000) and table rows (default 10000).",
    ),
    captions_dir=typer.Option(
        None, "--captions-dir", help="SAM: a folder of sa_<id>.txt captions (raw captions)."
    ),
    text_column=typer.Option(
        None, "--text-column", help="Tables: the caption column (default: caption/txt/TEXT/text)."
    ),
    image_column=typer.Option(
        None,
        "--image-column",
        help="Tables: the column of image bytes (default: a binary jpg/png/webp/image/img/bytes column).",
    ),
    max_pixels=typer.Option(
        64 * 1024 * 1024,
        "--max-pixels",
        help="Refuse images with more pixels than this, before decoding (decompression bombs).",
    ),
)

run_options = SimpleNamespace(
    executor=typer.Option(
        "local", "--executor", help="local: in this process; ray: Ray actors (embedded or --ray-address)."
    ),
    ray_address=typer.Option(
        None,
        "--ray-address",
        envvar="RAY_ADDRESS",
        help="Join this Ray cluster (default: start Ray locally).",
    ),
    workers=typer.Option(None, "--workers", help="Ray workers (default: as many as the resources allow)."),
)
