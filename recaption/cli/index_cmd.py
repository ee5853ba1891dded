"""``recaption index SOURCE OUTPUT``."""

from __future__ import annotations

import typer

from recaption.cli.app import app, handle_errors
from recaption.cli.options import run_options, source_options

FAILURES_LISTED = 50  # manifest rows listed by --json (the manifest itself has them all)


@app.command("index")
@handle_errors
def index_command(
    source: str = typer.Argument(..., help="Images to index (any layout `recaption inspect` knows)."),
    output: str = typer.Argument(..., help="Output folder (local path or fsspec URL)."),
    kind: str = source_options.kind,
    shard_size: int | None = source_options.shard_size,
    captions_dir: str | None = source_options.captions_dir,
    text_column: str | None = source_options.text_column,
    image_column: str | None = source_options.image_column,
    max_pixels: int = source_options.max_pixels,
    executor: str = run_options.executor,
    ray_address: str | None = run_options.ray_address,
    workers: int | None = run_options.workers,
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """Decode every image once and write part-NNNNN.parquet shards: key, reference, size, raw caption."""
    from recaption.index import IndexStage
    from recaption.readers import open_source
    from recaption.runner import RayOptions, run_stage

    src = open_source(
        source,
        kind=kind,
        shard_size=shard_size,
        captions_dir=captions_dir,
        text_column=text_column,
        image_column=image_column,
    )
    summary = run_stage(
        IndexStage(source=src, max_pixels=max_pixels),
        output,
        executor=executor,
        ray=RayOptions(address=ray_address, num_workers=workers),
    )
    if as_json:
        # the summary groups reasons by category (digits masked, details dropped); the JSON also
        # lists the manifest's first rows with their reasons as written, which is what one acts on
        from recaption.cli.app import print_json
        from recaption.shards.manifest import read_failures

        report = summary.to_dict()
        rows = read_failures(output).head(FAILURES_LISTED)
        report["failures"] = [
            {k: (int(v) if k == "shard" else str(v)) for k, v in row.items()}
            for row in rows.to_dict("records")
        ]
        print_json(report)
        if not summary.ok:
            raise typer.Exit(1)
        return
    from recaption.cli.summary import report_run

    report_run(summary, as_json)
