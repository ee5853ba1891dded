"""``recaption report RUN``."""

from __future__ import annotations

import typer

from recaption.cli.app import app, handle_errors


@app.command("report")
@handle_errors
def report_command(
    run: str = typer.Argument(..., help="A `recaption run` output folder (local path or fsspec URL)."),
    output: str | None = typer.Option(
        None, "--output", "-o", help="Where to write the HTML file (default: RUN/report/index.html)."
    ),
    gallery: int = typer.Option(24, "--gallery", help="Images in the gallery (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Which images the gallery draws."),
) -> None:
    """One self-contained HTML page of a run: Table 1 beside PixArt's, histograms, caption quality,
    failures and a gallery of images with both captions. Opens offline in any browser."""
    from recaption.errors import ConfigError
    from recaption.report import write_report

    if gallery < 0:
        raise ConfigError("--gallery", gallery, "0 or more images")
    url = write_report(run, output, gallery=gallery, seed=seed)
    typer.echo(url)
