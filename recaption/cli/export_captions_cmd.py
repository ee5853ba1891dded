"""``recaption export-captions RUN DEST``."""

from __future__ import annotations

import typer

from recaption.cli.app import app, handle_errors, print_json


@app.command("export-captions")
@handle_errors
def export_captions_command(
    run: str = typer.Argument(..., help="A `recaption run` output folder, or a `recaption caption` output."),
    dest: str = typer.Argument(..., help="Folder to write (local path or fsspec URL)."),
    format: str = typer.Option(
        "txt",
        "--format",
        help="txt: <name>.txt beside each image (kohya sd-scripts, OneTrainer, SimpleTuner); "
        "jsonl: imagefolder metadata.jsonl (file_name, text) for Hugging Face datasets.",
    ),
    caption: str = typer.Option("dense", "--caption", help="dense | raw | any caption shard column."),
    images: str = typer.Option(
        "copy", "--images", help="copy: the images too, bytes unchanged | none: captions only."
    ),
    caption_ext: str = typer.Option(".txt", "--caption-ext", help="txt format: caption file extension."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files that exist in DEST."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """The captions as training tools read them: .txt sidecars or an imagefolder metadata.jsonl."""
    from recaption.captions_export import export_captions

    s = export_captions(
        run, dest, format=format, caption=caption, images=images, caption_ext=caption_ext, overwrite=overwrite
    )
    if as_json:
        print_json(s.to_dict())
        return
    skipped = "; ".join(f"{n} × {why}" for why, n in s.skipped.items())
    typer.echo(
        f"export-captions: {s.written} {s.caption} captions → {s.dest} ({s.format}"
        f"{', images copied' if images == 'copy' else ''}); {s.renamed} renamed to avoid a name collision"
        + (f"; skipped {skipped}" if skipped else ""),
        err=True,
    )
