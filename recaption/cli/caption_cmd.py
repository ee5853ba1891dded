"""``recaption caption SOURCE OUTPUT``."""

from __future__ import annotations

import typer

from recaption.cli.app import app, handle_errors
from recaption.cli.options import run_options, source_options


@app.command("caption")
@handle_errors
def caption_command(
    source: str = typer.Argument(..., help="Images to caption (any layout `recaption inspect` knows)."),
    output: str = typer.Argument(..., help="Output folder for caption shards (local path or fsspec URL)."),
    model: str = typer.Option(
        "llava-hf/llava-1.5-7b-hf", "--model", help="Hub id or local folder of a chat-template VLM."
    ),
    revision: str | None = typer.Option(None, "--revision", help="Model revision (branch, tag or commit)."),
    prompt: list[str] = typer.Option(
        [],
        "--prompt",
        help="sam | laion | a template with {raw_caption} | auto (default: laion where the source has raw "
        "captions, sam otherwise). Repeatable as COLUMN=PROMPT, one caption column each, e.g. "
        "--prompt dense_caption=sam --prompt short_caption='Describe this image in one sentence.'",
    ),
    device: str = typer.Option("auto", "--device", help="auto | cuda | cuda:N | cpu."),
    dtype: str = typer.Option(
        "auto",
        "--dtype",
        help="auto (on GPU the checkpoint's own half dtype, bf16 for a float32 one; fp32 on CPU) | "
        "bfloat16 | float16 | float32.",
    ),
    batch_size: int = typer.Option(
        0, "--batch-size", help="Images per generate call (0: from free GPU memory)."
    ),
    max_new_tokens: int = typer.Option(
        512, "--max-new-tokens", help="Longest caption, in tokens (flagged if hit)."
    ),
    sample: bool = typer.Option(
        False, "--sample/--greedy", help="Sample (seeded, reproducible) or greedy decode."
    ),
    temperature: float = typer.Option(0.2, "--temperature", help="Sampling temperature (PixArt used 0.2)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling threshold."),
    seed: int = typer.Option(0, "--seed", help="Seed of the per-sample sampling streams."),
    max_image_pixels: int = typer.Option(
        1024 * 1024,
        "--max-image-pixels",
        help="Shrink larger images to this many pixels before preprocessing.",
    ),
    max_prompt_text_tokens: int = typer.Option(
        192,
        "--max-prompt-text-tokens",
        help="Text tokens a prompt may take beside its image (the raw-caption hint included); "
        "the prompt limit, cache and batch follow. Raise it for long non-Latin hints.",
    ),
    retry_flagged: int = typer.Option(
        0,
        "--retry-flagged",
        help="Regenerate a caption that hit --max-new-tokens or loops, with seeded sampling, up to N times "
        "(the first clean one is kept, or the last).",
    ),
    retry_temperature: float = typer.Option(0.7, "--retry-temperature", help="Temperature of those retries."),
    compile_: bool = typer.Option(
        False, "--compile/--no-compile", help="torch.compile generation on GPU (+8-10%, ~30 s warm-up)."
    ),
    image_aspect: str = typer.Option(
        "auto",
        "--image-aspect",
        help="auto | pad (to a square with the image mean; LLaVA-1.5's default) | crop (LLaVA-1.5's "
        "processor; other families keep the whole image).",
    ),
    stop_loops: bool = typer.Option(
        True, "--stop-loops/--no-stop-loops", help="End a caption whose tokens loop (not at max-new-tokens)."
    ),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own code."),
    image_option: list[str] = typer.Option(
        [],
        "--image-option",
        help="A model-family image option as KEY=VALUE (repeatable): min_pixels, max_pixels (Qwen2-VL, "
        "Qwen2.5-VL); longest_edge, do_image_splitting (Idefics3, SmolVLM).",
    ),
    kind: str = source_options.kind,
    shard_size: int | None = source_options.shard_size,
    captions_dir: str | None = source_options.captions_dir,
    text_column: str | None = source_options.text_column,
    image_column: str | None = source_options.image_column,
    executor: str = typer.Option(
        "auto",
        "--executor",
        help="ray: one actor per GPU (Ray starts here unless --ray-address); local: this process; "
        "auto: ray with --ray-address or more than one shard to do, else local.",
    ),
    ray_address: str | None = run_options.ray_address,
    workers: int | None = run_options.workers,
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """Dense captions with a vision-language model (PixArt's LLaVA recaptioning), a shard per input shard."""
    from recaption.pipeline.build import caption_stage, parse_key_values, section_from_flags
    from recaption.pipeline.config import CaptionConfig
    from recaption.readers import open_source
    from recaption.runner import RayOptions, run_stage

    section = section_from_flags(
        CaptionConfig,
        {
            "model": model,
            "revision": revision,
            "prompt": list(prompt) if len(prompt) > 1 else (prompt[0] if prompt else "auto"),
            "retry_flagged": retry_flagged,
            "retry_temperature": retry_temperature,
            "device": device,
            "dtype": dtype,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "sample": sample,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "max_image_pixels": max_image_pixels,
            "max_prompt_text_tokens": max_prompt_text_tokens,
            "compile": compile_,
            "image_aspect": image_aspect,
            "stop_loops": stop_loops,
            "trust_remote_code": trust_remote_code,
            "image_options": parse_key_values("--image-option", image_option),
        },
        flags={
            "sample": "--sample/--greedy",
            "compile": "--compile/--no-compile",
            "stop_loops": "--stop-loops/--no-stop-loops",
        },
    )
    src = open_source(
        source,
        kind=kind,
        shard_size=shard_size,
        captions_dir=captions_dir,
        text_column=text_column,
        image_column=image_column,
    )
    stage = caption_stage(section, src)
    summary = run_stage(
        stage, output, executor=executor, ray=RayOptions(address=ray_address, num_workers=workers)
    )
    from recaption.cli.summary import report_run

    report_run(summary, as_json)
