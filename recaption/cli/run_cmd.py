"""``recaption run [PIPELINE.yaml]``: caption → nouns → encode in one command."""

from __future__ import annotations

import typer

from recaption.cli.app import app, handle_errors, print_json


@app.command("run")
@handle_errors
def run_command(
    config: str | None = typer.Argument(
        None, help="A pipeline file (YAML); see pipelines/ and --help-config."
    ),
    source: str | None = typer.Option(None, "--source", help="Images (sets source.path)."),
    output: str | None = typer.Option(None, "--output", "-o", help="Output folder (sets output)."),
    preset: str | None = typer.Option(None, "--preset", help="alpha | sigma (sets encode.preset)."),
    model: str | None = typer.Option(None, "--model", help="Captioning VLM (sets caption.model)."),
    prompt: str | None = typer.Option(
        None, "--prompt", help="sam | laion | a template (sets caption.prompt)."
    ),
    executor: str | None = typer.Option(None, "--executor", help="auto | ray | local (sets executor)."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", envvar="RAY_ADDRESS", help="Join this Ray cluster."
    ),
    sets: list[str] = typer.Option([], "--set", help="Any setting as section.key=value (repeatable)."),
    help_config: bool = typer.Option(False, "--help-config", help="Print every pipeline setting and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Images to captions, noun statistics and PixArt features, stages overlapping shard by shard."""
    from recaption.pipeline.config import apply_overrides, describe_fields, load_config, read_config

    if help_config:
        typer.echo(describe_fields())
        return
    data = read_config(config) if config else {}
    flags = {
        "source.path": source,
        "output": output,
        "encode.preset": preset,
        "caption.model": model,
        "caption.prompt": prompt,
        "executor": executor,
        "ray.address": ray_address,
    }
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(sets)
    cfg = load_config(apply_overrides(data, overrides))
    from recaption.pipeline.run import run_pipeline

    result = run_pipeline(cfg)
    d = result.to_dict()
    d["totals"] = result.totals
    if as_json:
        print_json(d)
    else:
        print_pipeline_summary(d, result.report)
    if not result.ok():
        raise typer.Exit(1)


def print_pipeline_summary(d: dict, report: dict | None) -> None:
    from rich.table import Table

    from recaption.cli.app import console

    c = console(stderr=True)
    t = Table(title=f"recaption run → {d['output']}")
    for col in ("stage", "shards", "rows", "errors", "warnings", "rows/s", "output"):
        t.add_column(col)
    for name, s in d["stages"].items():
        t.add_row(
            name,
            f"{s['done_shards']} new, {s['skipped_shards']} done before, {len(s['failed_shards'])} failed",
            str(s["rows"]),
            str(s["errors"]),
            str(s["warnings"]),
            f"{s['rows_per_second']:.2f}",
            s["output"],
        )
    c.print(t)
    stages = d["stages"].values()
    if not any(s["done_shards"] or s["failed_shards"] for s in stages):
        # A rerun of a finished run: say so, rather than "0 images in 0.0s".
        done = ", ".join(f"{name} {s['skipped_shards']}" for name, s in d["stages"].items())
        c.print(f"nothing to do: every shard already done ({done}) in {d['output']}")
    else:
        c.print(
            f"{d['images']} images in {d['seconds']:.1f}s: {d['images_per_second']:.2f} images/s end to end"
        )
    from recaption.quality import quality_lines

    totals = d.get("totals") or {}
    for name, s in d["stages"].items():
        # the whole output's figures where known (a resumed run redid only part of it)
        quality = (totals.get(name) or {}).get("quality") or s.get("quality")
        for line, attention in quality_lines(s["stage"], quality):
            c.print(f"  [yellow]{line}[/]" if attention else f"  {line}", highlight=False)
        for reason, n in list(s["error_reasons"].items())[:5]:
            c.print(f"  {name}: {n} × {reason}")
    if report:
        from recaption.nouns.report import print_report

        print_report(report, console())  # stdout, as `recaption nouns` prints it
    if d["nouns_report"]:
        c.print("nouns report: " + ", ".join(d["nouns_report"].values()))
    if d.get("html_report"):
        c.print(f"report (open in a browser): {d['html_report']}")
