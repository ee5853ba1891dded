"""Per-bucket VAE queues that persist across the encode stage's row batches within a shard.

The stage reads rows in batches (``batch_rows``); split by resolution and aspect-ratio bucket, one
batch alone leaves most VAE forward passes part-empty (on web images: 4 images per pass on average
where 8 fit, ~100 shapes per resolution). Here every image waits in its (resolution, square,
bucket) queue until a full VAE batch (:meth:`VaeConfig.images_per_batch`) is there; the caller
flushes every queue at the end of the shard. Pending images are capped (``max_pending``): over the
cap, the fullest queue is encoded part-full. Results are handed back per caller tag, so the stage
can write its rows in their original order once all of a row's latents have arrived.

Knows nothing of shards or Ray: PIL images in, :class:`LatentResult` out.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from recaption.encoder.vae import ImageEncoder, LatentResult, _Prepared

# (resolution, square): one latent of an image
Target = tuple[int, bool]


@dataclass
class QueueStats:
    """What the queues did: forward batches (before any out-of-memory split) and their fill."""

    batches: int = 0
    images: int = 0
    capacity: int = 0  # sum over batches of the images a full batch of that bucket holds
    full_batches: int = 0
    cap_flushes: int = 0  # part-full batches encoded because the pending cap was hit
    # (resolution, square, height, width) of every batch
    shapes: set[tuple[int, bool, int, int]] = field(default_factory=set)

    @property
    def fill(self) -> float:
        """Images per batch over the images a full batch holds (1.0: every pass full)."""
        return self.images / self.capacity if self.capacity else 0.0


class BucketQueues:
    """Queues of prepared images per (resolution, square, bucket); see the module docstring."""

    def __init__(self, encoder: ImageEncoder, max_pending: int = 256) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.encoder = encoder
        self.max_pending = max_pending
        cfg = encoder.config
        self.targets: list[Target] = [(r, False) for r in cfg.resolutions]
        if cfg.square and cfg.multiscale:
            self.targets += [(r, True) for r in cfg.resolutions]
        self._queues: dict[tuple[int, bool, str], list[tuple[Hashable, _Prepared]]] = {}
        self._results: dict[Hashable, dict[Target, LatentResult]] = {}
        self.stats = QueueStats()

    @property
    def pending(self) -> int:
        """Images added whose latents are not all done yet."""
        n = len(self.targets)
        return sum(1 for got in self._results.values() if len(got) < n)

    def add(self, tag: Hashable, image: Any, orig_size: tuple[int, int]) -> None:
        """Queue one image at every target; full batches are encoded at once."""
        if tag in self._results:
            raise ValueError(f"tag {tag!r} added twice")
        self._results[tag] = {}
        for r, square in self.targets:
            p = self.encoder.prepare(image, r, orig_size, square)
            key = (r, square, p.bucket.key)
            q = self._queues.setdefault(key, [])
            q.append((tag, p))
            if len(q) >= self._batch_size(p):
                self._run(key)
        while self.pending > self.max_pending and self._queues:
            self.stats.cap_flushes += 1
            self._run(max(self._queues, key=lambda k: len(self._queues[k])))

    def flush(self) -> None:
        """Encode every queue, part-full or not (the end of a shard)."""
        for key in list(self._queues):
            self._run(key)

    def ready(self, tag: Hashable) -> bool:
        """Whether all of this image's latents are done."""
        return len(self._results[tag]) == len(self.targets)

    def pop(self, tag: Hashable) -> tuple[dict[int, LatentResult], dict[int, LatentResult]]:
        """A finished image's latents, ``({resolution: bucket latent}, {resolution: square latent})``."""
        got = self._results.pop(tag)
        return (
            {r: got[(r, False)] for r, sq in self.targets if not sq},
            {r: got[(r, True)] for r, sq in self.targets if sq},
        )

    def _batch_size(self, p: _Prepared) -> int:
        return self.encoder.config.images_per_batch(p.bucket.height, p.bucket.width)

    def _run(self, key: tuple[int, bool, str]) -> None:
        q = self._queues.pop(key, [])
        if not q:
            return
        r, square, _ = key
        bs = self._batch_size(q[0][1])
        for start in range(0, len(q), bs):
            chunk = q[start : start + bs]
            st = self.stats
            st.batches += 1
            st.images += len(chunk)
            st.capacity += bs
            st.full_batches += len(chunk) == bs
            b = chunk[0][1].bucket
            st.shapes.add((r, square, b.height, b.width))
            for (tag, _), lat in zip(
                chunk, self.encoder.encode_prepared([p for _, p in chunk], r), strict=True
            ):
                self._results[tag][(r, square)] = lat
