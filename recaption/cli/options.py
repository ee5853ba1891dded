"""Option declarations shared by several commands."""

from __future__ import annotations

from types import SimpleNamespace

import typer

source_options = SimpleNamespace(
    kind=typer.Option(
        "auto", "--kind", help="Source layout: auto, sam, webdataset, parquet, table, folder, captions."
    ),
    shard_size=typer.Option(
        None, "--shard-size", help="Samples per input shard for loose files and large tables (default 1000)."
    ),
    captions_dir=typer.Option(
        None, "--captions-dir", help="SAM: a folder of sa_<id>.txt captions (raw captions)."
    ),
    text_column=typer.Option(
        None, "--text-column", help="Tables: the caption column (default: caption/txt/TEXT/text)."
    ),
)
