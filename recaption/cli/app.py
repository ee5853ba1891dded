"""The Typer application object and what every command shares (errors, logging, output)."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from recaption import __version__

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="recaption",
    help="Raw image collections → dense captions, noun statistics, and PixArt-ready T5/VAE features.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"recaption {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """recaption: the PixArt data pipeline, done properly."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("recaption").setLevel(level)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


#: Width of tables and lines when the output is not a terminal (logs, `ray job logs`, files):
#: wide enough that Table 1 never wraps a cell ("Datas / et") as rich's default 80 columns did.
LOG_WIDTH = 240


def console(*, stderr: bool = False) -> Any:
    """A rich Console for stdout (or stderr): the terminal's width in a terminal; elsewhere
    :data:`LOG_WIDTH` columns and no wrapping of long lines, so logs keep one line per line."""
    from rich.console import Console

    tty = (sys.stderr if stderr else sys.stdout).isatty()
    return Console(stderr=stderr, width=None if tty else LOG_WIDTH, soft_wrap=not tty)


def fail(message: str, code: int = 2) -> None:
    """Print an error for a person and exit with ``code``."""
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn the errors recaption raises on purpose into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from recaption import interrupts
        from recaption.errors import RecaptionError

        # SIGTERM (a pre-empted node, a stopped job) stops a run as Ctrl-C does: the shard in hand
        # is dropped (its temporary files removed) and the finished ones stay for the rerun.
        previous = interrupts.install()
        try:
            return fn(*args, **kwargs)
        except RecaptionError as e:
            fail(str(e))
        except FileNotFoundError as e:
            fail(f"not found: {e}")
        except KeyboardInterrupt:
            typer.echo(
                "interrupted: finished shards are kept and the unfinished ones were dropped; "
                "run the same command again to resume",
                err=True,
            )
            raise typer.Exit(130) from None
        finally:
            interrupts.restore(previous)

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str, ensure_ascii=False))
