"""The single-stage commands and the pipeline file take the same settings with the same defaults.

Both build their stages from the pipeline's configuration sections (``recaption.pipeline.build``);
this checks that every command flag that names a section setting has the section's default, and
that the settings a command has no flag for are exactly the ones listed here, each for a reason.
"""

from __future__ import annotations

from typing import Any

import pytest
import typer.main

from recaption.cli import app
from recaption.pipeline.config import CaptionConfig, EncodeConfig, NounsConfig

# (command, section, flag parameter → section field, section fields with no flag and why)
CASES: list[tuple[str, Any, dict[str, str], dict[str, str]]] = [
    (
        "caption",
        CaptionConfig,
        {"compile_": "compile", "image_option": "image_options"},
        {
            "enabled": "pipeline only: which stages run",
            "min_new_tokens": "benchmarks only",
            "gpus_per_worker": "pipeline placement",
            "cpus_per_worker": "pipeline placement",
        },
    ),
    (
        "nouns",
        NounsConfig,
        {"column": "columns", "label": "labels"},
        {
            "enabled": "pipeline only: which stages run",
            "cpus_per_worker": "pipeline placement",
        },
    ),
    (
        "encode",
        EncodeConfig,
        {},
        {
            "enabled": "pipeline only: which stages run",
            "split_workers": "the command does it with --what text, then --what image --text-from",
            "gpus_per_worker": "pipeline placement",
            "cpus_per_worker": "pipeline placement",
        },
    ),
]

# how a flag's text default is written in the section
NORMALIZE = {
    ("encode", "fields"): lambda v: [x for x in v.split(",") if x],
    ("caption", "image_options"): lambda v: dict(x.split("=", 1) for x in v),
    ("encode", "drop_flagged"): lambda v: [x for x in v.split(",") if x],
    ("caption", "prompt"): lambda v: v[0] if len(v) == 1 else (v or "auto"),
}


@pytest.mark.parametrize(("command", "section", "renames", "no_flag"), CASES, ids=[c[0] for c in CASES])
def test_command_flags_have_the_sections_defaults(
    command: str, section: Any, renames: dict[str, str], no_flag: dict[str, str]
):
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}  # type: ignore[attr-defined]
    fields = section.model_fields
    flagged = {renames.get(name, name): p for name, p in params.items() if renames.get(name, name) in fields}
    assert set(fields) - set(flagged) == set(no_flag), "a section setting without a flag, or a stale entry"
    for field, p in flagged.items():
        want = fields[field].default
        got = NORMALIZE.get((command, field), lambda v: v)(p.default)
        if field in ("columns", "labels"):  # an empty list means the section's default
            assert got == [], field
            continue
        assert got == want, f"{command} --{field.replace('_', '-')}: {got!r} != {want!r}"


def test_a_bad_flag_value_names_the_flag(tmp_path):
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, ["encode", str(tmp_path), str(tmp_path / "o"), "--preset", "gamma"])
    assert r.exit_code != 0
    assert "--preset" in r.output and "'alpha' or 'sigma'" in r.output
    r = CliRunner().invoke(app, ["nouns", str(tmp_path), str(tmp_path / "o"), "--min-length", "x"])
    assert r.exit_code != 0
    r = CliRunner().invoke(app, ["encode", str(tmp_path), str(tmp_path / "o"), "--store-dtype", "int8"])
    assert r.exit_code != 0 and "--store-dtype" in r.output


def test_dtype_auto_is_described_as_it_behaves():
    """``--dtype auto`` keeps a float16 checkpoint in float16 on a GPU (``auto_dtype``); the flag's
    help and the pipeline setting said "bf16 on GPU"."""
    from recaption.captioner.model import auto_dtype

    assert auto_dtype("float16", "cuda", True) == "float16"
    assert auto_dtype("float32", "cuda", True) == "bfloat16"
    flag = next(
        p
        for p in typer.main.get_command(app).commands["caption"].params
        if p.name == "dtype"  # type: ignore[attr-defined]
    )
    for text in (flag.help or "", CaptionConfig.model_fields["dtype"].description or ""):
        assert "bf16 on GPU" not in text and "checkpoint's own half dtype" in text, text
