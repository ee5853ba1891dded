"""The ``recaption`` command. Command modules import only Typer at start-up; the heavy libraries
load inside the command that needs them, so ``recaption --help`` is instant."""

from __future__ import annotations

from recaption.cli import (  # noqa: F401  (registers the commands)
    caption_cmd,
    encode_cmd,
    export_captions_cmd,
    index_cmd,
    inspect_cmd,
    nouns_cmd,
    report_cmd,
    run_cmd,
    status_cmd,
    tiny_cmd,
)
from recaption.cli.app import app


def main() -> None:
    from recaption.hub import quiet_progress_bars

    quiet_progress_bars()  # before anything imports huggingface_hub: no tqdm bars in logs
    app()


__all__ = ["app", "main"]
