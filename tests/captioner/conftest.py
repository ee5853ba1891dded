"""Fixtures for the captioner tests: a tiny random LLaVA built once per session, real images if present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the Hugging Face hub: a missing model must fail from the cache, at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(os.environ.get("RECAPTION_SHARED", Path(__file__).resolve().parents[2] / ".." / "shared"))
DATA = SHARED / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or a skip naming what is missing."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (set RECAPTION_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> str:
    from recaption.captioner.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny") / "llava")


@pytest.fixture(scope="session")
def real_images() -> list:
    """The SAM photos and a few web images, decoded with recaption's decoder."""
    from recaption.images.decode import decode_image

    sam = sorted(shared_path("sam").glob("*.jpg"))
    web = sorted(shared_path("web_pairs", "images").glob("*.jpg"))[:6]
    return [decode_image(p.read_bytes()).image for p in [*sam, *web]]


@pytest.fixture
def generated_images() -> list:
    """Synthetic images of several sizes and modes (always available)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        for h, w in ((40, 60), (300, 200), (28, 28), (512, 90))
    ] + [Image.new("L", (64, 64), 128), Image.new("RGBA", (50, 70), (10, 20, 30, 128))]
