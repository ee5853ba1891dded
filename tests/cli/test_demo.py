"""The README's demo as written: `recaption run pipelines/tiny-offline.yaml`, no --source, on the
example photos the repository ships (examples/), from a fresh clone's layout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from recaption.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "images"


def test_examples_are_small_captioned_and_licensed():
    images = sorted(EXAMPLES.glob("*.jpg"))
    assert len(images) >= 4
    assert sum(p.stat().st_size for p in (ROOT / "examples").rglob("*") if p.is_file()) < 1_000_000
    licenses = (ROOT / "examples" / "README.md").read_text()
    for img in images:
        assert img.with_suffix(".txt").read_text().strip(), img.name
        assert f"`images/{img.name}`" in licenses, f"{img.name}: no license stated"


def test_demo_runs_with_no_source(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_llava_dir: str,
    tiny_t5_dir: str,
    tiny_vae_model_dir: str,
    caplog: pytest.LogCaptureFixture,
):
    # A fresh clone's layout: pipelines/ and examples/ from the repository, tiny-models/ as
    # `recaption tiny-models tiny-models` makes it (the session's tiny models, to save building them).
    monkeypatch.chdir(tmp_path)
    for name in ("pipelines", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "tiny-models").mkdir()
    for name, src in (("llava", tiny_llava_dir), ("t5", tiny_t5_dir), ("vae", tiny_vae_model_dir)):
        (tmp_path / "tiny-models" / name).symlink_to(src)
    caplog.set_level(logging.INFO, logger="recaption")
    r = CliRunner().invoke(app, ["run", "pipelines/tiny-offline.yaml", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = tmp_path / "runs" / "tiny"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(list(EXAMPLES.glob("*.jpg")))
    captions = pd.read_parquet(out / "captions")
    assert captions["raw_caption"].notna().all()  # the .txt sidecars are the raw captions
    assert captions["dense_caption"].notna().all()
    assert captions["error"].isna().all()
    assert (out / "report" / "index.html").exists()
    assert len(list((out / "features").glob("part-*.parquet"))) == 1
    # one shard: --executor auto ran it here, without starting Ray
    assert any("executor local: one shard per stage to do" in m for m in caplog.messages)
