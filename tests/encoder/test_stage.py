"""The encode stage end to end: tiny LLaVA captions → tiny T5 + tiny VAE feature shards → PixArt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recaption.captioner.model import CaptionerConfig
from recaption.captioner.stage import CaptionStage
from recaption.encoder import schema as S
from recaption.encoder.stage import EncodeStage, encode_configs
from recaption.errors import ConfigError
from recaption.readers import open_source
from recaption.runner import run_local
from recaption.shards.manifest import read_failures
from tests.builders import image_bytes, wds_sample, write_tar


@pytest.fixture(scope="module")
def caption_dir(tmp_path_factory: pytest.TempPathFactory, tiny_llava_dir: str) -> Path:
    d = tmp_path_factory.mktemp("enc")
    src = d / "wds"
    samples = []
    for i in range(5):
        samples += wds_sample(
            f"{i:09d}", f"a photo number {i} of a red car", seed=i, img=image_bytes(96, 64, seed=i)
        )
    samples += wds_sample(
        "000000005", "a very tall tower", 5, img=image_bytes(40, 200, seed=5)
    )  # ratio 5: dropped
    samples += wds_sample("000000006", "a broken file", 6, img=b"not an image")  # caption error
    samples += wds_sample("000000007", "", 7, img=image_bytes(64, 64, seed=7))  # empty raw caption
    samples += wds_sample(
        "000000008", " ".join(["long"] * 400), 8, img=image_bytes(64, 80, seed=8)
    )  # truncated
    write_tar(src / "00000.tar", samples[: 2 * 3 * 4])
    write_tar(src / "00001.tar", samples[2 * 3 * 4 :])
    out = d / "captions"
    cfg = CaptionerConfig(model=tiny_llava_dir, device="cpu", max_new_tokens=8, batch_size=4)
    assert run_local(CaptionStage(source=open_source(str(src)), model=cfg), str(out), progress=False).ok
    return out


def _stage(caption_dir: Path, t5: str, vae: str, **kw) -> EncodeStage:
    text, image = encode_configs(
        "alpha", t5_model=t5, vae_model=vae, resolutions=(256, 512), device="cpu", t5_hidden_size=32
    )
    return EncodeStage(captions=str(caption_dir), text=text, image=image, **kw)


def test_encode_writes_pixart_feature_shards(
    caption_dir: Path, tiny_t5_dir: str, tiny_vae_model_dir: str, tmp_path: Path
):
    out = tmp_path / "features"
    stage = _stage(caption_dir, tiny_t5_dir, tiny_vae_model_dir, fields=("dense", "raw"))
    summary = run_local(stage, str(out), progress=False)
    assert summary.ok
    # warnings are summed by reason too, not only counted
    warned = summary.to_dict()["warning_reasons"]
    # numbers grouped as N, names with digits (T5) kept whole
    assert warned["raw caption has N T5 tokens, over the limit of N"] == 1
    assert warned["raw caption is empty"] == 1
    files = sorted(out.glob("part-*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    meta = S.validate_file(str(files[0]), deep=True)
    assert meta.preset == "alpha"
    assert meta.text is not None and meta.text.hidden_size == 32 and meta.text.max_length == 120
    assert meta.image is not None and meta.image.resolutions == [256, 512]
    df = pd.read_parquet(out)
    assert sorted(df.key) == [f"{i:09d}" for i in (0, 1, 2, 3, 4, 7, 8)]
    row = df[df.key == "000000000"].iloc[0]
    assert (row.width, row.height) == (96, 64)
    n = int(row.t5_dense_len)
    feats = S.unpack_tensor(row.t5_dense, (n, 32), "float16")
    assert feats.shape == (n, 32)
    assert np.isfinite(feats).all()
    h, w = int(row.vae_256_h), int(row.vae_256_w)
    lat = S.unpack_tensor(row.vae_256, (8, h // 8, w // 8), "float16")
    assert (lat[4:] > 0).all()  # the std half is positive
    assert abs(row.vae_256_ratio - h / w) < 0.1
    long = df[df.key == "000000008"].iloc[0]
    assert bool(long.t5_raw_truncated)
    assert int(long.t5_raw_len) == 120
    fails = read_failures(str(out))
    by_key = {k: g for k, g in fails.groupby("key")}
    assert "PixArt" in by_key["000000005"].reason.iloc[0] or "ratio" in by_key["000000005"].reason.iloc[0]
    assert "captioning failed" in by_key["000000006"].reason.iloc[0]
    assert any("empty" in r for r in by_key["000000007"].reason)
    assert any("truncated" in r for r in by_key["000000008"].reason)


def test_trimmed_features_equal_full_length_computation(
    caption_dir: Path, tiny_t5_dir: str, tiny_vae_model_dir: str, tmp_path: Path
):
    """What the stage stored equals T5 run on each caption padded to 120 tokens, at the real tokens."""
    import torch
    from transformers import AutoTokenizer, T5EncoderModel

    out = tmp_path / "f"
    run_local(_stage(caption_dir, tiny_t5_dir, tiny_vae_model_dir), str(out), progress=False)
    df = pd.read_parquet(out)
    tok = AutoTokenizer.from_pretrained(tiny_t5_dir)
    model = T5EncoderModel.from_pretrained(tiny_t5_dir).eval()
    for _, row in df.iterrows():
        enc = tok(
            row.t5_dense_text, max_length=120, padding="max_length", truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            full = model(**enc).last_hidden_state[0].numpy()
        n = int(row.t5_dense_len)
        assert int(enc.attention_mask.sum()) == n
        stored = S.unpack_tensor(row.t5_dense, (n, 32), "float16").astype(np.float32)
        np.testing.assert_allclose(stored, full[:n], atol=2e-3, rtol=1e-2)


def test_resume_and_split_workers(
    caption_dir: Path, tiny_t5_dir: str, tiny_vae_model_dir: str, tmp_path: Path
):
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_local(_stage(caption_dir, tiny_t5_dir, tiny_vae_model_dir), str(ref), progress=False)
    run_local(_stage(caption_dir, tiny_t5_dir, tiny_vae_model_dir), str(out), progress=False)
    (out / "_stats" / "part-00001.json").unlink()
    second = run_local(_stage(caption_dir, tiny_t5_dir, tiny_vae_model_dir), str(out), progress=False)
    assert [s["shard"] for s in second.done] == [1]
    assert {p.name: p.read_bytes() for p in out.glob("part-*")} == {
        p.name: p.read_bytes() for p in ref.glob("part-*")
    }

    # T5 on one worker, the VAE on another: same rows and tensors
    text, image = encode_configs(
        "alpha",
        t5_model=tiny_t5_dir,
        vae_model=tiny_vae_model_dir,
        resolutions=(256, 512),
        device="cpu",
        t5_hidden_size=32,
    )
    t_out, i_out = tmp_path / "text", tmp_path / "image"
    run_local(EncodeStage(captions=str(caption_dir), text=text, image=None), str(t_out), progress=False)
    run_local(
        EncodeStage(captions=str(caption_dir), text=None, image=image, text_from=str(t_out)),
        str(i_out),
        progress=False,
    )
    a = pd.read_parquet(ref).sort_values("key").reset_index(drop=True)
    b = pd.read_parquet(i_out).sort_values("key").reset_index(drop=True)
    for col in ("key", "t5_dense", "t5_dense_len", "vae_256", "vae_512", "vae_512_h"):
        assert a[col].tolist() == b[col].tolist(), col


def test_pixart_dataset_and_export_read_the_stage_output(
    caption_dir: Path, tiny_t5_dir: str, tiny_vae_model_dir: str, tmp_path: Path
):
    from recaption.pixart.dataset import FeatureDataset
    from recaption.pixart.export import export_pixart

    out = tmp_path / "f"
    run_local(_stage(caption_dir, tiny_t5_dir, tiny_vae_model_dir), str(out), progress=False)
    ds = FeatureDataset(str(out), resolution=256)
    assert len(ds) == 7
    latent, text, mask, info = ds[0]
    assert latent.shape[0] == 4  # sampled from mean ‖ std: the latent channels
    assert abs(latent.shape[1] / latent.shape[2] - info["aspect_ratio"]) < 0.05  # the bucket's shape
    assert tuple(text.shape)[-2:] == (120, 32)
    assert int(mask.sum()) >= 1
    assert "aspect_ratio" in info
    export_pixart(str(out), str(tmp_path / "pixart"))
    info_files = list((tmp_path / "pixart").rglob("data_info.json"))
    assert info_files
    entries = json.loads(info_files[0].read_text())
    assert len(entries) == 7
    assert {"path", "prompt", "height", "width", "ratio"} <= set(entries[0])
    npz = list((tmp_path / "pixart").rglob("caption_feature_wmask/*.npz"))
    assert len(npz) == 7
    arr = np.load(npz[0])
    assert arr["caption_feature"].shape == (1, 120, 32)
    assert arr["attention_mask"].shape == (1, 120)


def test_bad_field_and_nothing_to_do(caption_dir: Path):
    with pytest.raises(ConfigError, match="--fields"):
        EncodeStage(captions=str(caption_dir), fields=("alt",))
    with pytest.raises(ConfigError, match="nothing"):
        EncodeStage(captions=str(caption_dir), text=None, image=None)
    with pytest.raises(ConfigError, match="--preset"):
        encode_configs("gamma")


def test_hidden_size_mismatch_fails_at_once(
    caption_dir: Path, tiny_t5_dir: str, tiny_vae_model_dir: str, tmp_path: Path
):
    text, image = encode_configs("alpha", t5_model=tiny_t5_dir, vae_model=tiny_vae_model_dir, device="cpu")
    stage = EncodeStage(captions=str(caption_dir), text=text, image=image)
    with pytest.raises(ConfigError, match="4096"):
        run_local(stage, str(tmp_path / "x"), progress=False)


def test_target_file_size_splits_shards_and_everything_reads_them(
    caption_dir: Path, tiny_t5_dir: str, tiny_vae_model_dir: str, tmp_path: Path
):
    """--max-file-rows: shard 0's 6 encoded rows go to two files of 3; the rows, the Dataset,
    the exporter, a split text run reused by --text-from, and resume all see the same features."""
    from typer.testing import CliRunner

    from recaption.cli import app
    from recaption.pixart.dataset import FeatureDataset
    from recaption.pixart.export import export_pixart

    ref, out = tmp_path / "ref", tmp_path / "split"
    run_local(_stage(caption_dir, tiny_t5_dir, tiny_vae_model_dir), str(ref), progress=False)
    args = [
        "encode", str(caption_dir), str(out), "--executor", "local", "--device", "cpu",
        "--t5-model", tiny_t5_dir, "--vae-model", tiny_vae_model_dir, "--t5-hidden-size", "32",
        "--resolutions", "256,512", "--max-file-rows", "3", "--json",
    ]  # fmt: skip
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.glob("part-*.parquet"))
    assert names == ["part-00000-000.parquet", "part-00000-001.parquet", "part-00001-000.parquet"]
    stats0 = json.loads((out / "_stats" / "part-00000.json").read_text())
    assert stats0["files"] == names[:2] and stats0["rows"] == 6
    assert [len(pd.read_parquet(out / n)) for n in names] == [3, 3, 1]
    a = pd.read_parquet(ref).sort_values("key").reset_index(drop=True)
    b = pd.read_parquet(out).sort_values("key").reset_index(drop=True)
    for col in ("key", "t5_dense", "vae_256", "vae_512"):
        assert a[col].tolist() == b[col].tolist(), col
    assert len(FeatureDataset(str(out), resolution=256)) == 7
    assert export_pixart(str(out), str(tmp_path / "pixart")).rows == 7

    # a rerun skips every shard; a lost stats file redoes that shard into the same files
    (out / "_stats" / "part-00000.json").unlink()
    before = {n: (out / n).read_bytes() for n in names}
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    d = json.loads(r.output[r.output.index("{") :])
    assert (d["done_shards"], d["skipped_shards"]) == (1, 1)
    assert {n: (out / n).read_bytes() for n in names} == before

    # a text run split by bytes, reused by an image-only run
    text, image = encode_configs(
        "alpha", t5_model=tiny_t5_dir, vae_model=tiny_vae_model_dir, resolutions=(256, 512),
        device="cpu", t5_hidden_size=32,
    )  # fmt: skip
    t_out, i_out = tmp_path / "text", tmp_path / "image"
    st = EncodeStage(captions=str(caption_dir), text=text, image=None, max_file_bytes=200)
    assert run_local(st, str(t_out), progress=False).ok
    assert len(list(t_out.glob("part-00000-*.parquet"))) >= 2
    si = EncodeStage(captions=str(caption_dir), text=None, image=image, text_from=str(t_out))
    assert run_local(si, str(i_out), progress=False).ok
    c = pd.read_parquet(i_out).sort_values("key").reset_index(drop=True)
    assert a.key.tolist() == c.key.tolist() and a.t5_dense.tolist() == c.t5_dense.tolist()

    with pytest.raises(ConfigError, match="--max-file-rows"):
        EncodeStage(captions=str(caption_dir), max_file_rows=0)
    r = CliRunner().invoke(app, [*args[:-3], "--max-file-size", "huge"])
    assert r.exit_code != 0 and "--max-file-size" in r.output


def test_text_from_with_fewer_fields_records_only_those(
    caption_dir: Path, tiny_t5_dir: str, tiny_vae_model_dir: str, tmp_path: Path
):
    """The text run encoded dense and raw; the image run keeps dense only: its files' metadata
    must list dense alone, or every reader looks for t5_raw columns that are not there."""
    text, image = encode_configs(
        "alpha", t5_model=tiny_t5_dir, vae_model=tiny_vae_model_dir, resolutions=(256,),
        device="cpu", t5_hidden_size=32,
    )  # fmt: skip
    t_out, i_out = tmp_path / "text", tmp_path / "image"
    assert run_local(
        EncodeStage(captions=str(caption_dir), text=text, image=None, fields=("dense", "raw")),
        str(t_out),
        progress=False,
    ).ok
    stage = EncodeStage(
        captions=str(caption_dir), text=None, image=image, fields=("dense",), text_from=str(t_out)
    )
    assert run_local(stage, str(i_out), progress=False).ok
    for f in sorted(i_out.glob("part-*.parquet")):
        meta = S.validate_file(str(f), deep=True)
        assert meta.text is not None and meta.text.fields == ["dense"]


def test_features_made_by_older_preprocessing_rules_are_not_mixed_with_new(
    caption_dir: Path, tiny_t5_dir: str, tiny_vae_model_dir: str, tmp_path: Path
):
    from recaption.encoder.vae import PREPROCESS_RULES
    from recaption.runner.base import OutputConflictError

    out = tmp_path / "f"
    run_local(_stage(caption_dir, tiny_t5_dir, tiny_vae_model_dir), str(out), progress=False)
    record = json.loads((out / "_stage.json").read_text())
    assert record["fingerprint"]["image"]["preprocess_rules"] == PREPROCESS_RULES
    # a folder from before the rules changed (its shards' pixels may differ), one shard unfinished
    del record["fingerprint"]["image"]["preprocess_rules"]
    (out / "_stage.json").write_text(json.dumps(record))
    (out / "_stats" / "part-00001.json").unlink()
    with pytest.raises(OutputConflictError, match="preprocess_rules"):
        run_local(_stage(caption_dir, tiny_t5_dir, tiny_vae_model_dir), str(out), progress=False)


def test_a_model_that_does_not_load_names_its_option(tmp_path: Path):
    from recaption.encoder.t5 import TextEncoder, TextEncoderConfig
    from recaption.encoder.vae import ImageEncoder, VaeConfig

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"--t5-model.*cannot load its configuration"):
        TextEncoder(TextEncoderConfig(model=str(empty), device="cpu")).load()
    with pytest.raises(ConfigError, match=r"--vae-model.*AutoencoderKL"):
        ImageEncoder(VaeConfig(model=str(empty), device="cpu")).load()
