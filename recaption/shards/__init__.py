"""Deterministic, resumable output shards: ``part-{i:05d}.parquet``, a failure manifest, and a
record of finished shards. See :mod:`recaption.shards.layout`."""
