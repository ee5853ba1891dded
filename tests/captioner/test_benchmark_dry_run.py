"""The GPU benchmark's CPU dry run: it must work end to end before anyone spends GPU time on it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from .conftest import shared_path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "caption_gpu.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("caption_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_caption_gpu_runs_on_the_tiny_model(tmp_path, capsys):
    images = shared_path("web_pairs", "images")
    module = _load_script()
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


@pytest.mark.parametrize("family", ["llava-next", "qwen2-vl", "qwen2.5-vl", "idefics3"])
def test_caption_gpu_runs_each_family_tiny(family, tmp_path, capsys):
    """``--tiny --family F``: the family's tiny model, plain ``generate`` and the Captioner in one run."""
    images = shared_path("web_pairs", "images")
    module = _load_script()
    out = tmp_path / "bench.json"
    argv = ["--tiny", "--quick", "--family", family, "--images", str(images), "--json", str(out)]
    argv += ["--b1-images", "1", "--variants", "static-b64:static:64"]
    assert module.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["family"] == family and report["model"] == f"tiny-{family} (random)"
    assert [r["name"] for r in report["rows"]] == ["plain-b1", "plain-b4", "static-b64"]
    for row in report["rows"]:
        assert "error" not in row, row
        assert row["images_per_s"] > 0
    captioner = report["rows"][2]
    assert captioner["errors"] == 0 and captioner["images"] == 4
    assert "vs plain b4" in capsys.readouterr().out


def test_real_family_architectures_match_the_published_sizes():
    """The 7B/8B configs built without weights (meta device) have the checkpoints' parameter counts."""
    import tempfile

    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from recaption.captioner.families import family

    module = _load_script()
    # Parameter counts the hub lists for each checkpoint (safetensors metadata), in billions.
    published = {"llava-next": 7.57, "qwen2-vl": 8.29, "qwen2.5-vl": 8.29, "idefics3": 8.46}
    for name, billions in published.items():
        folder = family(name).build_tiny(Path(tempfile.mkdtemp(prefix="fam-")) / "m")
        config = module.real_family_config(name, AutoConfig.from_pretrained(folder))
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == billions, name
