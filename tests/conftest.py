from __future__ import annotations

import os

import pytest

# Tests run offline: never let a library try the hub or report usage.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        # The marker, not item.keywords: keywords also hold folder names (a checkout in .../gpu/).
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random-weight LLaVA saved to disk, loaded through from_pretrained like a hub id."""
    from recaption.captioner.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava") / "llava")


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random-weight T5 encoder and tokenizer saved to disk (hidden size 32)."""
    from recaption.encoder.tiny_t5 import build_tiny_t5

    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5") / "t5")


@pytest.fixture(scope="session")
def tiny_vae_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random-weight AutoencoderKL saved to disk (4 latent channels, like SD's)."""
    from recaption.encoder.tiny_vae import build_tiny_vae

    return build_tiny_vae(str(tmp_path_factory.mktemp("tiny-vae") / "vae"))


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance of its own for a test module, with two CPUs (two actors)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
