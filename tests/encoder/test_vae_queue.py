"""Per-bucket VAE queues (issue 14 item 7): full forward passes on a mix of sizes, same latents.

The encode stage used to split each 64-row batch by bucket and encode it alone, so most VAE
passes were part-empty. These tests count the forward-pass batch sizes through a wrapped
``encode_arrays`` and check the shards equal the per-call path's: same files, rows, order, row
groups, failures and every column exactly, except the latent values, which equal within float16
rounding: a convolution's result depends on the batch it runs in (oneDNN on the CPU, cuDNN's
autotuned kernels on a GPU: the old path's latents changed with ``batch_rows`` too), so where an
image's batch mates differ, the last bits may.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recaption.encoder.stage import EncodeStage, encode_configs
from recaption.encoder.vae import ImageEncoder, VaeConfig
from recaption.encoder.vae_queue import BucketQueues
from recaption.readers import open_source
from recaption.readers.base import Sample
from recaption.runner import run_local
from recaption.runner.base import prepare_output
from recaption.shards.manifest import read_failures
from recaption.shards.writer import ShardOutput
from recaption.stage import Stage
from tests.builders import image_bytes, wds_sample, write_tar

# (width, height): four aspect ratios, so four buckets at 256
SIZES = [(64, 64), (96, 64), (64, 96), (128, 64)]
# two 256² crops per forward pass (the tiny VAE at 256 is slow on a shared CPU)
FULL = 2
BATCH_PIXELS = FULL * 256 * 256
LATENT_ATOL = 2e-3  # batch-dependent float32 differences, after float16 rounding


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=0, atol=LATENT_ATOL)


def _images(n: int) -> list[Any]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w, h = SIZES[(i * 7 + i // 3) % len(SIZES)]  # an irregular mix, as web images come
        out.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    return out


def _count_passes(enc: ImageEncoder, poison: bool = False) -> list[int]:
    """Wrap ``encode_arrays`` to record each forward pass's batch size (``poison``: an image
    whose first pixel is even gets NaN latents, a property of the image, not of its batch)."""
    sizes: list[int] = []
    inner = enc.encode_arrays

    def wrapped(pixels: np.ndarray, to_cpu: bool = True) -> Any:
        sizes.append(len(pixels))
        out = inner(pixels, to_cpu=to_cpu)
        if poison:
            out = out.clone()
            for i in range(len(pixels)):
                if int(pixels[i, 0, 0, 0]) % 2 == 0:
                    out[i] = float("nan")
        return out

    enc.encode_arrays = wrapped  # type: ignore[method-assign]
    return sizes


def _encoder(vae_dir: str, **kw: Any) -> ImageEncoder:
    cfg = VaeConfig(model=vae_dir, device="cpu", resolutions=(256,), batch_pixels=BATCH_PIXELS, **kw)
    return ImageEncoder(cfg).load()


def test_queues_fill_every_pass_but_the_flushes_and_equal_the_per_call_latents(tiny_vae_model_dir: str):
    square = True  # the square latents queue too, each in its own (resolution, square) queue
    images = _images(10)
    sizes = [im.size for im in images]
    enc = _encoder(tiny_vae_model_dir, square=square)
    passes = _count_passes(enc)
    # the per-call path: rows in calls of 3, each call split by bucket on its own
    per_call: list[Any] = []
    for s in range(0, len(images), 3):
        per_call += enc.encode_all(images[s : s + 3], sizes[s : s + 3])
        per_call_sq = enc.encode_all_square(images[s : s + 3], sizes[s : s + 3])
        for d, sq in zip(per_call[-len(per_call_sq) :], per_call_sq, strict=True):
            d.update({-r: lat for r, lat in sq.items()})
    baseline = list(passes)
    passes.clear()
    q = BucketQueues(enc, max_pending=1000)
    for i, (im, size) in enumerate(zip(images, sizes, strict=True)):
        q.add(i, im, size)
    q.flush()
    queued = list(passes)
    n_queues = len(q.stats.shapes)  # one queue per bucket, and one of square crops
    assert n_queues == len(SIZES) + 1
    # full passes everywhere except at most one flush per queue
    assert sum(b < FULL for b in queued) <= n_queues
    assert sum(queued) == sum(baseline) == len(images) * (2 if square else 1)
    assert len(queued) < len(baseline)
    assert q.stats.fill > 0.8 > sum(baseline) / (FULL * len(baseline))
    for i in range(len(images)):
        assert q.ready(i)
        per_res, sq = q.pop(i)
        want = per_call[i]
        _close(per_res[256].latent, want[256].latent)
        assert per_res[256].bucket == want[256].bucket and per_res[256].crop == want[256].crop
        _close(sq[256].latent, want[-256].latent)
        assert sq[256].bucket.height == sq[256].bucket.width == 256


def test_pending_images_are_capped_by_flushing_the_fullest_queue(tiny_vae_model_dir: str):
    images = _images(10)
    enc = _encoder(tiny_vae_model_dir)
    ref = enc.encode_all(images, [im.size for im in images])
    passes = _count_passes(enc)
    q = BucketQueues(enc, max_pending=1)
    for i, im in enumerate(images):
        q.add(i, im, im.size)
        assert q.pending <= 1
    q.flush()
    assert q.stats.cap_flushes > 0 and sum(passes) == len(images)
    for i in range(len(images)):
        _close(q.pop(i)[0][256].latent, ref[i][256].latent)


class _FixedCaptions(Stage):
    """Caption shards with one fixed caption per image, no VLM (the encode stage's input)."""

    name = "caption"

    def __init__(self, src: Any) -> None:
        self.src = src

    def schema(self) -> Any:
        from recaption.captioner.stage import caption_schema

        return caption_schema()

    def fingerprint(self) -> dict[str, Any]:
        return {"root": self.src.root}

    def shards(self) -> Any:
        return self.src.shards()

    def process_shard(self, shard: Any, out: ShardOutput) -> dict[str, Any]:
        from recaption.columns import sample_row
        from recaption.images.decode import decode_image

        rows = []
        for s in self.src.read_shard(shard):
            if isinstance(s, Sample):
                try:
                    d = decode_image(s.image_bytes())
                    s.width, s.height = d.width, d.height
                except Exception:
                    s.width = s.height = None  # the encode stage must record it, not us
                rows.append(sample_row(s) | {"dense_caption": f"a photo of {s.key}", "finish_reason": "stop"})
        out.write(rows)
        return {}


@pytest.fixture(scope="module")
def mixed_captions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("vaeq")
    samples = []
    for i in range(12):
        w, h = SIZES[(i * 7 + i // 3) % len(SIZES)]
        samples += wds_sample(f"{i:09d}", "x", seed=i, img=image_bytes(w, h, seed=i))
    samples += wds_sample("000000012", "x", 12, img=b"not an image")  # cannot be decoded
    samples += wds_sample("000000013", "x", 13, img=image_bytes(40, 200, seed=13))  # ratio 5: dropped
    write_tar(d / "wds" / "00000.tar", samples[: 3 * 8])
    write_tar(d / "wds" / "00001.tar", samples[3 * 8 :])
    stage = _FixedCaptions(open_source(str(d / "wds")))
    prepare_output(stage, str(d / "captions"), stage.shards())
    assert run_local(stage, str(d / "captions"), progress=False).ok
    return d / "captions"


def _run(caps: Path, t5: str, vae: str, out: Path, poison: bool = False, **kw: Any) -> dict[str, Any]:
    """One encode run; its shard bytes, failures and forward-pass batch sizes."""
    text, image = encode_configs(
        "alpha", t5_model=t5, vae_model=vae, resolutions=(256,), device="cpu", t5_hidden_size=32
    )
    image.batch_pixels = BATCH_PIXELS
    stage = EncodeStage(captions=str(caps), text=text, image=image, **kw)
    stage.setup()
    assert stage._image_enc is not None
    passes = _count_passes(stage._image_enc, poison)
    summary = run_local(stage, str(out), progress=False)
    assert summary.ok
    fails = read_failures(str(out))
    return {
        "shards": {p.name: _read(p) for p in sorted(out.glob("part-*.parquet"))},
        "failures": sorted(zip(fails["key"], fails["reason"], strict=True)),
        "passes": passes,
    }


def _read(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    return {
        "row_groups": [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)],
        "metadata": f.schema_arrow.metadata,
        "columns": f.read().to_pydict(),
    }


def _same_shards(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Equal shards; latent bytes equal within :data:`LATENT_ATOL` (see the module docstring)."""
    assert a.keys() == b.keys() and a
    for name, x in a.items():
        y = b[name]
        assert x["row_groups"] == y["row_groups"] and x["metadata"] == y["metadata"]
        assert x["columns"].keys() == y["columns"].keys()
        for col, vals in x["columns"].items():
            if col in ("vae_256", "vae_256_square"):
                for u, v in zip(vals, y["columns"][col], strict=True):
                    _close(np.frombuffer(u, np.float16), np.frombuffer(v, np.float16))
            else:
                assert vals == y["columns"][col], col


@pytest.mark.parametrize("batch_rows", [1, 5])
def test_stage_shards_equal_the_per_call_path_with_fuller_passes(
    mixed_captions: Path, tiny_t5_dir: str, tiny_vae_model_dir: str, tmp_path: Path, batch_rows: int
):
    args = (mixed_captions, tiny_t5_dir, tiny_vae_model_dir)
    old = _run(*args, tmp_path / "per-call", batch_rows=batch_rows, vae_queues=False)
    new = _run(*args, tmp_path / "queues", batch_rows=batch_rows)
    assert len(old["shards"]) == 2
    _same_shards(old["shards"], new["shards"])
    reasons = dict(new["failures"])
    assert "cannot open the image" in reasons["000000012"] and "skipped" in reasons["000000013"]
    assert old["failures"] == new["failures"]
    assert sum(old["passes"]) == sum(new["passes"]) == 12
    # per shard: at most one part-full pass per bucket queue, the rest full
    assert sum(b < FULL for b in new["passes"]) <= 2 * len(SIZES)
    assert len(new["passes"]) < len(old["passes"])
    if batch_rows == 1:
        # a cap of one pending image: the fullest queue runs after every row, rows still complete
        capped = _run(*args, tmp_path / "capped", batch_rows=batch_rows, vae_queue_images=1)
        _same_shards(old["shards"], capped["shards"])
        assert old["failures"] == capped["failures"]


def test_failed_latents_fail_the_same_rows_as_the_per_call_path(
    mixed_captions: Path, tiny_t5_dir: str, tiny_vae_model_dir: str, tmp_path: Path
):
    args = (mixed_captions, tiny_t5_dir, tiny_vae_model_dir)
    old = _run(*args, tmp_path / "per-call", poison=True, batch_rows=3, vae_queues=False)
    new = _run(*args, tmp_path / "queues", poison=True, batch_rows=3)
    nan = [k for k, why in new["failures"] if "non-finite" in why]
    assert 0 < len(nan) < 12
    assert old["failures"] == new["failures"]
    _same_shards(old["shards"], new["shards"])


def test_queue_cap_must_be_positive(mixed_captions: Path):
    from recaption.errors import ConfigError

    with pytest.raises(ConfigError, match="vae_queue_images"):
        EncodeStage(captions=str(mixed_captions), text=None, image=VaeConfig(), vae_queue_images=0)
