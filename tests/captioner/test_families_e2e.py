"""Each family's tiny model captions the same real photos (and generated images of very different
sizes, in the same batches) end to end: ``recaption caption`` locally and on Ray, and
``recaption run``; all three give the same captions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from recaption.captioner.families import FAMILY_NAMES, build_tiny_models
from recaption.cli import app
from tests.captioner.conftest import shared_path

OPTS = ["--max-new-tokens", "6", "--batch-size", "4", "--device", "cpu", "--max-image-pixels", "40000"]


@pytest.fixture(scope="module")
def tiny_families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return build_tiny_models(str(tmp_path_factory.mktemp("families")))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared SAM photos plus generated images from 28 px to 1000 px, tall and wide, JPEG and PNG."""
    import numpy as np
    from PIL import Image

    d = tmp_path_factory.mktemp("photos")
    for p in sorted(shared_path("sam").glob("*.jpg")):
        shutil.copy(p, d / p.name)
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate(((28, 28), (40, 1000), (1000, 60), (300, 200))):
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        img.save(d / f"gen{i}.{'png' if i % 2 else 'jpg'}")
    return d


def captions(out: Path) -> pd.DataFrame:
    df = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))])
    return df.sort_values("key").reset_index(drop=True)


def caption_cli(source: Path, out: Path, model: str, *extra: str) -> pd.DataFrame:
    r = CliRunner().invoke(app, ["caption", str(source), str(out), "--model", model, *OPTS, *extra, "--json"])
    assert r.exit_code == 0, r.output
    return captions(out)


def check(df: pd.DataFrame, photos: Path, model: str) -> None:
    assert len(df) == len(list(photos.iterdir()))
    assert df["error"].isna().all(), df["error"].tolist()
    assert df["finish_reason"].isin(["stop", "length"]).all()
    assert (df["num_tokens"] > 0).all()
    assert (df["model_id"] == model).all()
    assert df["prompt_name"].eq("sam").all()  # a folder without raw captions: the plain prompt


@pytest.fixture(scope="module")
def local_captions(tiny_families: dict[str, str], photos: Path, tmp_path_factory: pytest.TempPathFactory):
    """``recaption caption --executor local`` per family, run once and shared by the tests below."""
    done: dict[str, pd.DataFrame] = {}

    def get(name: str) -> pd.DataFrame:
        if name not in done:
            out = tmp_path_factory.mktemp(f"local-{name}")
            done[name] = caption_cli(photos, out, tiny_families[name], "--executor", "local")
        return done[name]

    return get


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_caption_command_locally(tiny_families: dict[str, str], photos: Path, local_captions, name: str):
    check(local_captions(name), photos, tiny_families[name])


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_run_command_equals_caption_command(
    tiny_families: dict[str, str], photos: Path, local_captions, tmp_path: Path, name: str
):
    run_out = tmp_path / "run"
    sets = {
        "max_new_tokens": 6,
        "batch_size": 4,
        "device": "cpu",
        "max_image_pixels": 40000,
    }
    args = ["run", "--source", str(photos), "--output", str(run_out), "--model", tiny_families[name]]
    args += ["--executor", "local", "--set", "nouns.enabled=false", "--set", "encode.enabled=false", "--json"]
    for k, v in sets.items():
        args += ["--set", f"caption.{k}={v}"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    run = captions(run_out / "captions")
    check(run, photos, tiny_families[name])
    assert run["dense_caption"].tolist() == local_captions(name)["dense_caption"].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_caption_command_on_ray_equals_local(
    local_ray, tiny_families: dict[str, str], photos: Path, local_captions, tmp_path: Path, name: str
):
    model = tiny_families[name]
    ray = caption_cli(photos, tmp_path / "ray", model, "--executor", "ray", "--workers", "1")
    check(ray, photos, model)
    assert ray["dense_caption"].tolist() == local_captions(name)["dense_caption"].tolist()
