"""T5 text features and VAE latents, and the parquet feature-shard schema PixArt training reads."""
