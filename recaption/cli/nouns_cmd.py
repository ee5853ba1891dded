"""``recaption nouns INPUT... OUTPUT``."""

from __future__ import annotations

import typer

from recaption.cli.app import app, handle_errors, print_json
from recaption.cli.options import run_options


@app.command("nouns")
@handle_errors
def nouns_command(
    paths: list[str] = typer.Argument(
        ..., help="INPUT... OUTPUT: caption folders or captions sources, then the output."
    ),
    label: list[str] = typer.Option([], "--label", help="A label per compared caption column, in order."),
    column: list[str] = typer.Option(
        [], "--column", help="Caption-run columns to compare (default raw_caption, dense_caption)."
    ),
    text_column: list[str] = typer.Option(
        [],
        "--text-column",
        help="Tables: the caption column (e.g. TEXT, IIW); once for all, or once per input.",
    ),
    shard_size: int | None = typer.Option(
        None, "--shard-size", help="Captions per shard for large tables and loose files (default: per file)."
    ),
    threshold: float = typer.Option(
        10, "--threshold", help="VN: nouns appearing more than T times (PixArt: 10)."
    ),
    lemmatize: bool = typer.Option(True, "--lemmatize/--no-lemmatize", help="Count lemmas (dogs → dog)."),
    lowercase: bool = typer.Option(True, "--lowercase/--keep-case", help="Lowercase nouns."),
    pos: str = typer.Option("NOUN+PROPN", "--pos", help="NOUN | NOUN+PROPN."),
    compounds: str = typer.Option("off", "--compounds", help="off | join | parser."),
    min_length: int = typer.Option(2, "--min-length", help="Shortest noun kept (characters)."),
    alpha_only: bool = typer.Option(
        True, "--alpha-only/--any-chars", help="Keep only alphabetic nouns (drops 3d, covid-19)."
    ),
    stop_list: str = typer.Option("default", "--stop-list", help="default | captions | none."),
    stop_file: str | None = typer.Option(None, "--stop-file", help="Extra stop words, one per line."),
    max_chars: int = typer.Option(10_000, "--max-chars", help="Longer captions are cut there and flagged."),
    spacy_model: str = typer.Option("en_core_web_sm", "--spacy-model", help="spaCy pipeline name or path."),
    executor: str = typer.Option(
        "auto",
        "--executor",
        help="ray (one spaCy model per worker) | local | auto (ray with --ray-address or more than "
        "one shard to do, else local).",
    ),
    ray_address: str | None = run_options.ray_address,
    workers: int | None = run_options.workers,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Noun statistics in PixArt's Table 1 form (VN/DN, total nouns, nouns per image), side by side."""
    from recaption.errors import ConfigError
    from recaption.nouns.report import print_report
    from recaption.nouns.stage import NounsStage, make_inputs, merge_reports
    from recaption.pipeline.build import noun_options, section_from_flags
    from recaption.pipeline.config import NounsConfig
    from recaption.runner import RayOptions, run_stage

    if len(paths) < 2:
        raise ConfigError("INPUT... OUTPUT", paths, "at least one input and an output folder")
    *inputs, output = paths
    section = section_from_flags(
        NounsConfig,
        {
            "threshold": threshold,
            "lemmatize": lemmatize,
            "lowercase": lowercase,
            "pos": pos,
            "compounds": compounds,
            "min_length": min_length,
            "alpha_only": alpha_only,
            "stop_list": stop_list,
            "stop_file": stop_file,
            "max_chars": max_chars,
            "spacy_model": spacy_model,
        },
        flags={
            "lemmatize": "--lemmatize/--no-lemmatize",
            "lowercase": "--lowercase/--keep-case",
            "alpha_only": "--alpha-only/--any-chars",
        },
    )
    options = noun_options(section)
    stage = NounsStage(
        inputs=make_inputs(inputs, label or None, column or None, text_column or None, shard_size),
        options=options,
    )
    summary = run_stage(
        stage, output, executor=executor, ray=RayOptions(address=ray_address, num_workers=workers)
    )
    if not summary.ok and not summary.done and not summary.skipped:
        # no finished shard to report on: say why the shards failed, not that the output is empty
        from recaption.cli.summary import print_summary

        print_summary(summary)
        raise typer.Exit(1)
    urls, report = merge_reports(output, threshold=section.threshold)
    if as_json:
        print_json(report)
    else:
        from recaption.cli.summary import print_summary

        print_summary(summary)
        print_report(report)
        typer.echo("reports: " + ", ".join(urls.values()), err=True)
    if not summary.ok:
        raise typer.Exit(1)
