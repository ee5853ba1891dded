"""A tiny ``AutoencoderKL`` with random weights, for tests and CPU smoke runs (no download).

It has the SD VAE's structure (four down blocks, so latents are 1/8 of the image size, a
mid-block attention, 4 latent channels, ``scaling_factor`` 0.18215) at a few channels, is saved with
``save_pretrained`` and loads back through the same ``from_pretrained`` path a hub id takes.
"""

from __future__ import annotations

import os
from typing import Any

TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}


def build_tiny_vae(folder: str, *, seed: int = 0, **overrides: Any) -> str:
    """Write a tiny random ``AutoencoderKL`` to ``folder`` (a local path); returns ``folder``.

    Deterministic: the same ``seed`` and ``overrides`` give the same weights. ``overrides`` change
    the config (e.g. ``latent_channels=8`` for a model that does not match a preset).
    """
    import torch
    from diffusers import AutoencoderKL

    config = {**TINY_VAE_CONFIG, **overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**config)
    os.makedirs(folder, exist_ok=True)
    # save_pretrained is ModelMixin's; the type checker does not see it through diffusers.
    vae.save_pretrained(folder)  # type: ignore[attr-defined]
    return folder
