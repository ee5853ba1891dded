"""recaption: raw image collections to PixArt-ready text-to-image training data.

Stages: caption (a VLM on Ray actors) → nouns (spaCy statistics, PixArt's Table 1) →
encode (T5 text features and VAE latents in parquet shards).
"""

from __future__ import annotations

__version__ = "0.1.0"
