"""``recaption tiny-models DIR``: random-weight stand-ins for trying the pipeline offline."""

from __future__ import annotations

import typer

from recaption.cli.app import app, handle_errors


@app.command("tiny-models")
@handle_errors
def tiny_models_command(
    folder: str = typer.Argument(
        "tiny-models", help="Where to write one folder per captioner family, t5/ and vae/."
    ),
    family: list[str] = typer.Option(
        [],
        "--family",
        help="Build only these captioner families (repeatable): llava, llava-next, qwen2-vl, qwen2.5-vl, "
        "idefics3. Default: all.",
    ),
) -> None:
    """Build tiny random-weight captioners (one per model family: llava/, llava-next/, qwen2-vl/,
    qwen2.5-vl/, idefics3/), a T5 and a VAE. Their outputs are noise: for dry runs and tests."""
    from pathlib import Path

    from recaption.captioner.families import FAMILY_NAMES, build_tiny_models
    from recaption.encoder.tiny_t5 import build_tiny_t5
    from recaption.encoder.tiny_vae import build_tiny_vae
    from recaption.errors import ConfigError

    for name in family:
        if name not in FAMILY_NAMES:
            raise ConfigError("--family", name, FAMILY_NAMES)
    root = Path(folder)
    paths = build_tiny_models(str(root), list(family) or None)
    paths["t5"] = build_tiny_t5(root / "t5")
    paths["vae"] = build_tiny_vae(str(root / "vae"))
    for name, p in paths.items():
        typer.echo(f"{name}: {p}")
    typer.echo("T5 hidden size: 32 (pass --t5-hidden-size 32 when encoding with this T5)")
