"""``recaption inspect SOURCE``."""

from __future__ import annotations

from typing import Any

import typer

from recaption.cli.app import app, handle_errors, print_json
from recaption.cli.options import source_options


@app.command("inspect")
@handle_errors
def inspect_command(
    source: str = typer.Argument(
        ..., help="A folder, file, glob or URL: SAM tars, webdataset tars, parquet, images."
    ),
    kind: str = source_options.kind,
    shard_size: int | None = source_options.shard_size,
    captions_dir: str | None = source_options.captions_dir,
    text_column: str | None = source_options.text_column,
    image_column: str | None = source_options.image_column,
    max_pixels: int = source_options.max_pixels,
    limit: int | None = typer.Option(None, "--limit", "-n", help="Read at most this many samples."),
    no_decode: bool = typer.Option(
        False, "--no-decode", help="Read image headers only (faster; misses truncation)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """What a source holds: layout, shards, samples, image sizes, aspect ratios, captions, failures."""
    from recaption.inspector import InspectOptions, inspect_source
    from recaption.readers import open_source

    src = open_source(
        source,
        kind=kind,
        shard_size=shard_size,
        captions_dir=captions_dir,
        text_column=text_column,
        image_column=image_column,
    )
    report = inspect_source(src, InspectOptions(limit=limit, decode=not no_decode, max_pixels=max_pixels))
    if as_json:
        print_json(report)
    else:
        render_report(report)


def render_report(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    c.print(
        f"[bold]{r['source']}[/]: [cyan]{r['kind']}[/], {r['shards']} shard(s), "
        f"{r['samples_ok']} usable of {r['samples_read']} samples read"
        + (" (stopped at --limit)" if r["limited"] else "")
        + f", {r['errors']} error(s), {r['warnings']} warning(s) in {r['seconds']}s"
    )
    if r["images"]:
        im = r["images"]
        t = Table(title="image size (px)")
        for col in ("", "min", "p05", "median", "mean", "p95", "max"):
            t.add_column(col, justify="right")
        for dim in ("width", "height"):
            d = im[dim]
            t.add_row(dim, *(f"{d.get(k, 0):g}" for k in ("min", "p05", "median", "mean", "p95", "max")))
        c.print(t)
        for title, key in (("aspect ratio (height/width)", "aspect_ratio_hw"), ("megapixels", "megapixels")):
            t = Table(title=title)
            t.add_column("bin")
            t.add_column("images", justify="right")
            total = max(1, sum(im[key].values()))
            for name, n in im[key].items():
                t.add_row(name, f"{n} ({100 * n / total:.0f}%)")
            c.print(t)
        c.print(f"formats: {im['formats']}  modes: {im['modes']}")
    cap = r["captions"]
    if cap["with_caption"]:
        w = cap["words"]
        c.print(
            f"captions: {cap['with_caption']} ({cap['empty']} empty)"
            + (f" from {', '.join(cap['from'])}" if cap.get("from") else "")
            + "; words per caption: "
            f"median {w.get('median', 0):g}, mean {w.get('mean', 0):g}, "
            f"p95 {w.get('p95', 0):g}, max {w.get('max', 0):g}"
        )
    else:
        c.print("captions: none")
    if r["examples"]:
        t = Table(title="examples")
        for col in ("key", "size", "caption"):
            t.add_column(col)
        for e in r["examples"]:
            size = f"{e['width']}x{e['height']}" if e["width"] else ""
            t.add_row(e["key"], size, e["caption"][:100])
        c.print(t)
    if r["failures"]:
        t = Table(
            title=f"failures ({r['errors']} errors, {r['warnings']} warnings; first {len(r['failures'])})"
        )
        for col in ("key", "severity", "stage", "reason"):
            t.add_column(col, overflow="fold")
        for f in r["failures"]:
            t.add_row(f["key"] or f["uri"], f["severity"], f["stage"], f["reason"])
        c.print(t)
