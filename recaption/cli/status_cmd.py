"""``recaption status OUTPUT``."""

from __future__ import annotations

import typer

from recaption.cli.app import app, handle_errors, print_json


@app.command("status")
@handle_errors
def status_command(
    output: str = typer.Argument(..., help="A run's output folder (a pipeline folder or one stage's)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """How far a run got: shards done per stage, rows, failures (also while it runs)."""
    from recaption.status import run_status

    st = run_status(output)
    if as_json:
        print_json(st)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{output}")
    for col in ("stage", "shards done", "in progress", "rows", "errors", "warnings", "top error reasons"):
        t.add_column(col)
    for s in st["stages"]:
        reasons = "; ".join(f"{n}× {r}" for r, n in list(s["error_reasons"].items())[:3])
        t.add_row(
            str(s["stage"]),
            f"{s['shards_done']}/{s['shards_total']}" + (" ✓" if s["complete"] else ""),
            ", ".join(
                f"{i} (written {s['in_progress_idle_seconds'][str(i)]:.0f} s ago)"
                if s.get("running")
                else f"{i} (left by a stopped run; a rerun redoes it)"
                for i in s["shards_in_progress"]
            )
            or "-",
            str(s["rows"]),
            str(s["errors"]),
            str(s["warnings"]),
            reasons or "-",
        )
    Console().print(t)
