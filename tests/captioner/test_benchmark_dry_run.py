"""The GPU benchmark's CPU dry run: it must work end to end before anyone spends GPU time on it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from .conftest import shared_path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "caption_gpu.py"


def test_caption_gpu_runs_on_the_tiny_model(tmp_path, capsys):
    images = shared_path("web_pairs", "images")
    spec = importlib.util.spec_from_file_location("caption_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    assert module.main(["--tiny", "--quick", "--images", str(images), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["rows"]]
    assert names[:2] == ["plain-b1", "plain-b4"]
    assert len(names) == 2 + 5
    for row in report["rows"]:
        assert "error" not in row, row
        assert row["images_per_s"] > 0
    captioner_rows = report["rows"][2:]
    assert all(r["errors"] == 0 for r in captioner_rows)
    # rows end at lengths drawn from real captions (not all at the cap): padding waste is measured
    assert all(r["length_finishes"] == 0 for r in captioner_rows)
    assert all(0 <= r["padding_waste"] < 1 and r["row_steps"] > 0 for r in captioner_rows)
    assert any(r["wasted_row_steps"] > 0 for r in captioner_rows)
    assert "vs plain b4" in capsys.readouterr().out
