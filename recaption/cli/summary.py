"""The end-of-run summary people read."""

from __future__ import annotations

from recaption.quality import quality_lines
from recaption.runner.base import RunSummary


def report_run(summary: RunSummary, as_json: bool) -> None:
    """Print a stage run's summary (JSON on stdout, or for people on stderr); exit 1 if shards failed."""
    import typer

    if as_json:
        from recaption.cli.app import print_json

        print_json(summary.to_dict())
    else:
        print_summary(summary)
    if not summary.ok:
        raise typer.Exit(1)


def print_summary(summary: RunSummary) -> None:
    from recaption.cli.app import console

    c = console(stderr=True)
    d = summary.to_dict()
    if not d["done_shards"] and not d["failed_shards"]:
        c.print(
            f"[bold]{d['stage']}[/]: nothing to do: {d['skipped_shards']} shard(s) already done "
            f"→ {d['output']}"
        )
        return
    c.print(
        f"[bold]{d['stage']}[/]: {d['done_shards']} shard(s) written, {d['skipped_shards']} already done, "
        f"{len(d['failed_shards'])} failed; {d['rows']} rows, {d['errors']} errors, {d['warnings']} warnings "
        f"in {d['seconds']:.1f}s ({d['rows_per_second']:.1f} rows/s) → {d['output']}"
    )
    for line, attention in quality_lines(d["stage"], d.get("quality")):
        c.print(f"  [yellow]{line}[/]" if attention else f"  {line}", highlight=False)
    for reason, n in list(d["error_reasons"].items())[:10]:
        c.print(f"  {n:>6} × {reason}")
    for reason, n in list(d["warning_reasons"].items())[:5]:
        c.print(f"  {n:>6} × (warning) {reason}")
    if d["errors"] or d["warnings"]:
        c.print(f"  failure manifest: {summary.output}/_failures/ (one parquet per shard)")
    for idx, err in d["failed_shards"].items():
        c.print(f"  [red]shard {idx} failed[/]: {err}")
