"""``recaption encode CAPTIONS OUTPUT`` and ``recaption export-pixart FEATURES DEST``."""

from __future__ import annotations

import typer

from recaption.cli.app import app, handle_errors, print_json
from recaption.cli.options import run_options


def parse_resolutions(text: str | None) -> tuple[int, ...] | None:
    from recaption.errors import ConfigError

    if not text:
        return None
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(
            "--resolutions", text, "comma-separated sizes among 256, 512, 1024, 2048, 2880"
        ) from None


@app.command("encode")
@handle_errors
def encode_command(
    captions: str = typer.Argument(..., help="A folder of caption shards (`recaption caption` output)."),
    output: str = typer.Argument(..., help="Output folder for feature shards."),
    preset: str = typer.Option(
        "alpha", "--preset", help="alpha (T5 120 tokens, cleaned; SD VAE) | sigma (300; SDXL VAE)."
    ),
    fields: str = typer.Option(
        "dense",
        "--fields",
        help="Captions to encode, comma-separated: dense, raw, or a caption column (dense,short_caption).",
    ),
    drop_flagged: str = typer.Option(
        "",
        "--drop-flagged",
        help="Leave out rows whose captions are flagged, comma-separated: length, repetition, fallback, "
        "error "
        "(each dropped key in the manifest, counted by reason).",
    ),
    what: str = typer.Option(
        "both", "--what", help="both | text (T5 only) | image (VAE only; see --text-from)."
    ),
    text_from: str | None = typer.Option(
        None, "--text-from", help="With --what image: reuse this run's T5 features."
    ),
    t5_model: str | None = typer.Option(
        None, "--t5-model", help="T5 hub id or folder (default: the preset's)."
    ),
    t5_hidden_size: int | None = typer.Option(
        None, "--t5-hidden-size", help="Expected hidden size (default: the preset's)."
    ),
    vae_model: str | None = typer.Option(
        None, "--vae-model", help="VAE hub id or folder (default: the preset's)."
    ),
    resolutions: str | None = typer.Option(
        None, "--resolutions", help="e.g. 256,512,1024 (default: the preset's)."
    ),
    square: bool = typer.Option(
        False, "--square", help="Also store the square latents single-scale training reads."
    ),
    vae_resize: str = typer.Option(
        "crop",
        "--vae-resize",
        help="crop (PixArt's training transform) | stretch (PixArt's extract_features.py --multi_scale).",
    ),
    device: str = typer.Option("auto", "--device", help="auto | cuda | cuda:N | cpu."),
    store_dtype: str = typer.Option(
        "float16", "--store-dtype", help="float16 | bfloat16 for stored tensors."
    ),
    batch_rows: int = typer.Option(
        64, "--batch-rows", help="Samples per encode call and per parquet row group."
    ),
    max_file_rows: int | None = typer.Option(
        None, "--max-file-rows", help="Split a shard into files of at most this many rows."
    ),
    max_file_size: str | None = typer.Option(
        None, "--max-file-size", help="Split a shard into files of at most this size (512MB, 2GiB)."
    ),
    executor: str = typer.Option(
        "auto",
        "--executor",
        help="ray (actors, one per GPU) | local (this process) | auto (ray with --ray-address or more "
        "than one shard to do, else local).",
    ),
    ray_address: str | None = run_options.ray_address,
    workers: int | None = run_options.workers,
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """T5 text features and VAE latents in parquet shards that PixArt training loads."""
    from recaption.pipeline.build import encode_stage, section_from_flags
    from recaption.pipeline.config import EncodeConfig
    from recaption.runner import RayOptions, run_stage

    res = parse_resolutions(resolutions)
    section = section_from_flags(
        EncodeConfig,
        {
            "preset": preset,
            "fields": [f.strip() for f in fields.split(",") if f.strip()],
            "drop_flagged": [f.strip() for f in drop_flagged.split(",") if f.strip()],
            "t5_model": t5_model,
            "t5_hidden_size": t5_hidden_size,
            "vae_model": vae_model,
            "resolutions": list(res) if res else None,
            "square": square,
            "vae_resize": vae_resize,
            "device": device,
            "store_dtype": store_dtype,
            "batch_rows": batch_rows,
            "max_file_rows": max_file_rows,
            "max_file_size": max_file_size or None,
        },
    )
    stage = encode_stage(section, captions, what=what, text_from=text_from)
    summary = run_stage(
        stage, output, executor=executor, ray=RayOptions(address=ray_address, num_workers=workers)
    )
    from recaption.cli.summary import report_run

    report_run(summary, as_json)


@app.command("export-pixart")
@handle_errors
def export_pixart_command(
    features: str = typer.Argument(..., help="A folder of feature shards (`recaption encode` output)."),
    dest: str = typer.Argument(..., help="Where to write PixArt's own layout (data_info.json, npz, npy)."),
    caption_field: str | None = typer.Option(
        None, "--caption", help="Caption field for `prompt` (default: first)."
    ),
    alt_caption_field: str | None = typer.Option(
        None, "--alt-caption", help="PixArt-Σ's alternative caption field."
    ),
    resolutions: str | None = typer.Option(None, "--resolutions", help="Latents to export (default: all)."),
    layouts: str = typer.Option(
        "internal", "--layouts", help="internal (PixArt-α) and/or sigma (PixArt-Σ), comma-separated."
    ),
    images: bool = typer.Option(
        False, "--images", help="Also each image, for configs with load_vae_feat=False (InternImgs/)."
    ),
    link_images: bool = typer.Option(
        True,
        "--link-images/--copy-images",
        help="Hard-link (else symlink) local image files PixArt reads as the same pixels.",
    ),
    compress: bool = typer.Option(False, "--compress", help="Compressed .npz (np.savez_compressed)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files already in DEST."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Write PixArt's own on-disk layout, so the unmodified PixArt training code can train on it."""
    import dataclasses

    from recaption.pixart.export import export_pixart

    summary = export_pixart(
        features,
        dest,
        caption_field=caption_field,
        alt_caption_field=alt_caption_field,
        resolutions=parse_resolutions(resolutions),
        layouts=tuple(x.strip() for x in layouts.split(",") if x.strip()),
        images=images,
        link_images=link_images,
        compress=compress,
        overwrite=overwrite,
    )
    d = dataclasses.asdict(summary) if dataclasses.is_dataclass(summary) else dict(summary.__dict__)
    if as_json:
        print_json(d)
    else:
        from rich.console import Console

        c = Console(stderr=True)
        c.print(f"[bold]export-pixart[/]: {d['rows']} images → {d['dest']} ({len(d['skipped'])} skipped)")
        for folder, n in d["files"].items():
            c.print(f"  {n:>7} files in {folder}")
        for how, n in d["images"].items():
            c.print(f"  {n:>7} images {how} in {d['images_root']}")
        for key, reason in d["skipped"][:10]:
            c.print(f"  skipped {key}: {reason}", markup=False, highlight=False)
        for hint in d["config_hints"]:
            settings = {k: v for k, v in hint.items() if k not in ("pixart_config", "shipped")}
            c.print(
                f"  {hint['pixart_config']}: " + ", ".join(f"{k}={v!r}" for k, v in settings.items()),
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        for line in d["warnings"]:
            c.print(f"[yellow]warning[/]: {line}", soft_wrap=True)
