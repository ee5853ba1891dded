"""The README's offline quick start, command by command (tiny models, the repository's pipeline file)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recaption.cli import app

ROOT = Path(__file__).resolve().parents[2]


def test_readme_starts_with_setup_and_test_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    assert blocks[0].strip().splitlines() == [
        'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]"',
        ".venv/bin/python -m pytest",
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]"' in ci
    assert ".venv/bin/python -m pytest" in ci


@pytest.mark.slow
def test_offline_quick_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wds_source: Path):
    text = (ROOT / "README.md").read_text()
    assert ".venv/bin/recaption tiny-models tiny-models" in text
    # the examples, no --source: tests/cli/test_demo.py runs it
    assert ".venv/bin/recaption run pipelines/tiny-offline.yaml  " in text
    assert (
        ".venv/bin/recaption run pipelines/tiny-offline.yaml --source path/to/images --output runs/mine"
        in text
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipelines").symlink_to(ROOT / "pipelines")
    runner = CliRunner()
    r = runner.invoke(app, ["tiny-models", "tiny-models"], catch_exceptions=False)
    assert r.exit_code == 0
    r = runner.invoke(
        app,
        [
            "run",
            "pipelines/tiny-offline.yaml",
            "--source",
            str(wds_source),
            "--output",
            "runs/tiny",
            "--json",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    d, _ = json.JSONDecoder().raw_decode(r.output[r.output.index('{\n  "output"') :])
    assert d["images"] == 12
    assert set(d["stages"]) == {"caption", "nouns", "encode"}
    assert (tmp_path / "runs" / "tiny" / "report" / "nouns.md").exists()
    assert len(list((tmp_path / "runs" / "tiny" / "features").glob("part-*.parquet"))) == 3
