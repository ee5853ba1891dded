"""``recaption tiny-models DIR``: random-weight stand-ins for trying the pipeline offline."""

from __future__ import annotations

import typer

from recaption.cli.app import app, handle_errors


@app.command("tiny-models")
@handle_errors
def tiny_models_command(
    folder: str = typer.Argument("tiny-models", help="Where to write llava/, t5/ and vae/."),
) -> None:
    """Build tiny random-weight LLaVA, T5 and VAE models (their outputs are noise: for dry runs and tests)."""
    from pathlib import Path

    from recaption.captioner.tiny import build_tiny_llava
    from recaption.encoder.tiny_t5 import build_tiny_t5
    from recaption.encoder.tiny_vae import build_tiny_vae

    root = Path(folder)
    paths = {
        "llava": build_tiny_llava(root / "llava"),
        "t5": build_tiny_t5(root / "t5"),
        "vae": build_tiny_vae(str(root / "vae")),
    }
    for name, p in paths.items():
        typer.echo(f"{name}: {p}")
    typer.echo("T5 hidden size: 32 (pass --t5-hidden-size 32 when encoding with this T5)")
