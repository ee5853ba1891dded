"""A small captioned webdataset and tiny models for whole-pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.builders import SHARED_DATA, image_bytes, wds_sample, write_tar

FALLBACK_CAPTIONS = [
    "a red car parked on a street",
    "two dogs playing in the snow",
    "a bowl of fruit on a wooden table",
    "the skyline of a city at night",
    "a man riding a bicycle",
    "a cat sleeping on a sofa",
]


def make_webdataset(folder: Path, n: int = 12, per_shard: int = 4) -> Path:
    """Webdataset tars of real web images with their captions where ../shared exists, else generated."""
    pairs: list[tuple[bytes, str]] = []
    caps = SHARED_DATA / "web_pairs" / "captions.json"
    if caps.exists():
        items = json.loads(caps.read_text())
        for item in items[:n]:
            img = SHARED_DATA / "web_pairs" / "images" / Path(item["image"]).name
            if img.exists():
                pairs.append((img.read_bytes(), item["caption"]))
    while len(pairs) < n:
        i = len(pairs)
        pairs.append((image_bytes(96, 72, seed=i), FALLBACK_CAPTIONS[i % len(FALLBACK_CAPTIONS)]))
    for s in range(0, n, per_shard):
        members = []
        for i in range(s, min(n, s + per_shard)):
            img, cap = pairs[i]
            members += wds_sample(f"{i:09d}", cap, img=img)
        write_tar(folder / f"{s // per_shard:05d}.tar", members)
    return folder


@pytest.fixture(scope="session")
def tiny_models(
    tmp_path_factory: pytest.TempPathFactory, tiny_llava_dir: str, tiny_t5_dir: str, tiny_vae_model_dir: str
) -> dict[str, str]:
    return {"llava": tiny_llava_dir, "t5": tiny_t5_dir, "vae": tiny_vae_model_dir}


@pytest.fixture(scope="session")
def wds_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_webdataset(tmp_path_factory.mktemp("pipeline-src") / "wds")


def tiny_config(
    source: Path | str, output: Path | str, models: dict[str, str], executor: str = "local"
) -> dict:
    return {
        "source": {"path": str(source)},
        "output": str(output),
        "executor": executor,
        "ray": {"num_cpus": 2},
        "caption": {
            "model": models["llava"],
            "device": "cpu",
            "max_new_tokens": 12,
            "batch_size": 4,
            "workers": 1,
        },
        "nouns": {"workers": 1, "cpus_per_worker": 0.5},
        "encode": {
            "t5_model": models["t5"],
            "t5_hidden_size": 32,
            "vae_model": models["vae"],
            "resolutions": [256],
            "device": "cpu",
            "fields": ["dense", "raw"],
            "workers": 1,
            "cpus_per_worker": 0.5,
        },
    }
