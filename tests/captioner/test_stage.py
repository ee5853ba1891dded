"""The caption stage end to end with the tiny LLaVA: shards, manifest, resume, Ray, prompts."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from recaption.captioner.model import CaptionerConfig
from recaption.captioner.stage import CaptionStage
from recaption.errors import ConfigError
from recaption.readers import open_source
from recaption.runner import RayOptions, run_local, run_ray
from recaption.shards.manifest import read_failures
from tests.builders import image_bytes, sam_member_pairs, truncated_jpeg, wds_sample, write_tar


def cfg(model: str, **kw) -> CaptionerConfig:
    kw.setdefault("max_new_tokens", 6)
    kw.setdefault("batch_size", 4)
    kw.setdefault("device", "cpu")
    return CaptionerConfig(model=model, **kw)


@pytest.fixture
def sam_tars(tmp_path: Path) -> Path:
    d = tmp_path / "sa1b"
    write_tar(d / "sa_000000.tar", sam_member_pairs(1, 3))
    write_tar(d / "sa_000001.tar", [*sam_member_pairs(4, 2), ("sa_9.jpg", truncated_jpeg())])
    write_tar(d / "sa_000002.tar", sam_member_pairs(6, 2))
    return d


@pytest.fixture
def laion_wds(tmp_path: Path) -> Path:
    d = tmp_path / "laion"
    samples = wds_sample("000000000", "a red car parked by the sea", 1)
    samples += wds_sample("000000001", "   ", 2)  # empty raw caption: fallback to the SAM prompt
    samples += wds_sample("000000002", "Tavern Brawl by velinov", 3, img=b"<html>404</html>")
    write_tar(d / "00000.tar", samples)
    return d


def _parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}


def test_caption_shards_with_every_column(tiny_llava_dir: str, sam_tars: Path, tmp_path: Path):
    out = tmp_path / "captions"
    stage = CaptionStage(source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir))
    summary = run_local(stage, str(out), progress=False)
    assert summary.ok
    df = pd.read_parquet(out)
    assert len(df) == 8  # 7 images + the truncated one (a row with its error)
    good = df[df.error.isna()]
    assert len(good) == 7
    assert (good.prompt == "Describe this image and its style in a very detailed manner").all()
    assert (good.prompt_name == "sam").all()
    assert (good.finish_reason.isin(["stop", "length"])).all()
    assert (good.num_tokens.between(1, 6)).all()
    assert (good.model_id == tiny_llava_dir).all()
    assert good.width.notna().all()
    assert good.dense_caption.map(lambda t: isinstance(t, str)).all()
    bad = df[df.key == "sa_9"].iloc[0]
    assert bad.finish_reason == "error"
    assert "truncated" in bad.error
    assert pd.isna(bad.dense_caption)
    fails = read_failures(str(out))
    assert list(fails[fails.severity == "error"].key) == ["sa_9"]
    assert fails[fails.key == "sa_9"].stage.iloc[0] == "caption"
    # the manifest says why, in the words the row has (not a placeholder)
    errors = fails[fails.severity == "error"].set_index("key").reason
    assert errors["sa_9"] == bad.error
    assert "truncated" in errors["sa_9"]
    assert (good.image_aspect == "pad").all()  # LLaVA-1.5 sees the whole image


def test_length_limit_is_kept_and_flagged(tiny_llava_dir: str, sam_tars: Path, tmp_path: Path):
    out = tmp_path / "captions"
    stage = CaptionStage(
        source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir, max_new_tokens=3, min_new_tokens=3)
    )
    run_local(stage, str(out), progress=False)
    df = pd.read_parquet(out)
    good = df[df.error.isna()]
    assert (good.finish_reason == "length").all()
    assert (good.num_tokens == 3).all()
    assert good.dense_caption.notna().all()


def test_laion_prompt_uses_raw_caption_and_falls_back(tiny_llava_dir: str, laion_wds: Path, tmp_path: Path):
    out = tmp_path / "captions"
    stage = CaptionStage(source=open_source(str(laion_wds)), model=cfg(tiny_llava_dir))
    assert stage.template.name == "laion"
    run_local(stage, str(out), progress=False)
    df = pd.read_parquet(out).set_index("key")
    assert df.loc["000000000", "prompt"] == (
        "Give the caption of this image 'a red car parked by the sea', describe this image and its style "
        "in a very detailed manner"
    )
    assert not df.loc["000000000", "prompt_fallback"]
    assert df.loc["000000001", "prompt_fallback"]
    assert df.loc["000000001", "prompt"] == "Describe this image and its style in a very detailed manner"
    assert "not an image" in df.loc["000000002", "error"]
    fails = read_failures(str(out))
    assert any("fallback" in r for r in fails[fails.key == "000000001"].reason)


def test_custom_template_and_bad_template(tiny_llava_dir: str, laion_wds: Path):
    src = open_source(str(laion_wds))
    st = CaptionStage(
        source=src, model=cfg(tiny_llava_dir), prompt="Describe this photo; its alt text: {raw_caption}"
    )
    assert st.template.uses_raw_caption
    with pytest.raises(ConfigError, match="raw_caption"):
        CaptionStage(source=src, model=cfg(tiny_llava_dir), prompt="Describe {subject} in detail")


def test_captions_only_source_is_refused(tiny_llava_dir: str, tmp_path: Path):
    p = tmp_path / "caps.jsonl"
    p.write_text('{"caption": "x"}\n')
    with pytest.raises(ConfigError, match="captions-only"):
        CaptionStage(source=open_source(str(p)), model=cfg(tiny_llava_dir))


def test_resume_after_interrupted_run_equals_uninterrupted(
    tiny_llava_dir: str, sam_tars: Path, tmp_path: Path
):
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_local(
        CaptionStage(source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir)), str(ref), progress=False
    )
    run_local(
        CaptionStage(source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir)), str(out), progress=False
    )
    # interrupt: shard 1 never completed (stats missing, a half-written temporary left behind)
    (out / "_stats" / "part-00001.json").unlink()
    (out / "part-00001.parquet").rename(out / ".part-00001.parquet.tmp-aaaaaaaaaaaa")
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    summary = run_local(
        CaptionStage(
            source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir, batch_size=2)
        ),  # batch may change
        str(out),
        progress=False,
    )
    assert [s["shard"] for s in summary.done] == [1]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name in before} == before
    assert _parts(out) == _parts(ref)
    assert not list(out.glob(".*tmp*"))


def test_rerun_with_another_model_setting_is_refused(tiny_llava_dir: str, sam_tars: Path, tmp_path: Path):
    from recaption.runner.base import OutputConflictError

    out = tmp_path / "out"
    run_local(
        CaptionStage(source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir)), str(out), progress=False
    )
    with pytest.raises(OutputConflictError, match="max_new_tokens: 6 → 9"):
        run_local(
            CaptionStage(source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir, max_new_tokens=9)),
            str(out),
            progress=False,
        )


def test_seeded_sampling_is_reproducible_across_runs_and_batching(
    tiny_llava_dir: str, sam_tars: Path, tmp_path: Path
):
    def run(name: str, **kw) -> pd.Series:
        out = tmp_path / name
        stage = CaptionStage(
            source=open_source(str(sam_tars)),
            model=cfg(tiny_llava_dir, do_sample=True, temperature=1.0, max_new_tokens=8, **kw),
        )
        run_local(stage, str(out), progress=False)
        return pd.read_parquet(out).set_index("key").dense_caption.dropna().sort_index()

    a = run("a", seed=1)
    b = run("b", seed=1, batch_size=1)
    c = run("c", seed=2)
    assert a.equals(b)
    assert not a.equals(c)


def test_model_that_does_not_exist_fails_at_once(sam_tars: Path, tmp_path: Path):
    stage = CaptionStage(source=open_source(str(sam_tars)), model=cfg(str(tmp_path / "no-such-model")))
    with pytest.raises(ConfigError, match="no-such-model"):
        stage.setup()


def test_bad_image_does_not_kill_the_batch(tiny_llava_dir: str, tmp_path: Path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(5):
        (d / f"ok{i}.jpg").write_bytes(image_bytes(64, 48, seed=i))
    (d / "empty.jpg").write_bytes(b"")
    (d / "one_px.png").write_bytes(image_bytes(1, 1, fmt="PNG"))
    out = tmp_path / "o"
    run_local(CaptionStage(source=open_source(str(d)), model=cfg(tiny_llava_dir)), str(out), progress=False)
    df = pd.read_parquet(out).set_index("key")
    assert df.loc[[f"ok{i}" for i in range(5)], "error"].isna().all()
    assert "empty file" in df.loc["empty", "error"]
    assert "too small" in df.loc["one_px", "error"]
    fails = read_failures(str(out))
    errors = fails[fails.severity == "error"].set_index("key").reason
    assert "empty file" in errors["empty"]
    assert "too small" in errors["one_px"]


def test_generation_errors_reach_the_manifest_with_their_reason(
    tiny_llava_dir: str, sam_tars: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from recaption.captioner.model import Captioner

    real = Captioner._generate_ids

    def failing(self, inputs, seeds, max_new_tokens=None):
        if max_new_tokens is None:  # not the probe in load()
            raise ValueError("Image features and image tokens do not match")
        return real(self, inputs, seeds, max_new_tokens)

    monkeypatch.setattr(Captioner, "_generate_ids", failing)
    out = tmp_path / "o"
    stage = CaptionStage(source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir, max_failed_batches=9))
    run_local(stage, str(out), progress=False)
    fails = read_failures(str(out))
    errors = fails[fails.severity == "error"].set_index("key").reason
    assert len(errors) == 8
    assert "truncated" in errors["sa_9"]
    assert all(errors.drop("sa_9").str.contains("generation failed: ValueError: Image features"))


def test_accelerator_fault_fails_the_shard_and_commits_nothing(
    tiny_llava_dir: str, sam_tars: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from recaption.captioner.model import Captioner

    real = Captioner._generate_ids

    def faulty(self, inputs, seeds, max_new_tokens=None):
        if max_new_tokens is None:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(self, inputs, seeds, max_new_tokens)

    out = tmp_path / "o"
    with monkeypatch.context() as m:
        m.setattr(Captioner, "_generate_ids", faulty)
        summary = run_local(
            CaptionStage(source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir)), str(out)
        )
    assert sorted(summary.failed) == [0, 1, 2]
    assert all("illegal memory access" in r for r in summary.failed.values())
    assert not list(out.glob("part-*.parquet"))  # no shard of error rows was committed
    # a rerun on a healthy worker captions every shard
    summary = run_local(CaptionStage(source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir)), str(out))
    assert summary.ok
    assert len(pd.read_parquet(out).dropna(subset=["dense_caption"])) == 7


def test_a_broken_ray_worker_exits_so_its_shard_is_retried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from recaption.errors import WorkerFault
    from recaption.runner import ray as ray_runner

    class Exited(Exception):
        pass

    def fake_exit(code: int) -> None:
        raise Exited(code)

    def broken_shard(*a, **kw):
        raise WorkerFault("accelerator fault, the worker cannot go on: CUDA error")

    monkeypatch.setattr(ray_runner.os, "_exit", fake_exit)
    monkeypatch.setattr(ray_runner, "run_shard", broken_shard)
    worker = ray_runner.StageWorker(stage=None)  # type: ignore[arg-type]
    with pytest.raises(Exited) as info:
        worker.process({"index": 0, "uri": "x"}, str(tmp_path))
    assert info.value.args == (ray_runner.WORKER_FAULT_EXIT_CODE,)


@pytest.mark.slow
def test_two_ray_actors_give_the_local_result(local_ray, tiny_llava_dir: str, sam_tars: Path, tmp_path: Path):
    ref, out = tmp_path / "ref", tmp_path / "ray"
    run_local(
        CaptionStage(source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir)), str(ref), progress=False
    )
    stage = CaptionStage(source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir, device="auto"))
    summary = run_ray(stage, str(out), RayOptions(num_workers=2), progress=False)
    assert summary.ok
    assert summary.workers == 2  # two actors started; timing decides which shards each does
    # every shard done exactly once, in the actors' processes (not the driver's)
    workers = [s["worker"] for s in summary.done]
    assert sorted(s["shard"] for s in summary.done) == list(range(summary.total_shards))
    assert all(w.rsplit(":", 1)[1] != str(os.getpid()) for w in workers)
    assert _parts(out) == _parts(ref)


@pytest.mark.slow
def test_ray_missing_model_fails_at_once(local_ray, sam_tars: Path, tmp_path: Path):
    stage = CaptionStage(source=open_source(str(sam_tars)), model=cfg(str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="nope"):
        run_ray(stage, str(tmp_path / "o"), RayOptions(num_workers=2), progress=False)


def test_a_long_non_latin_hint_names_the_setting_that_lets_it_through(tiny_llava_dir: str, tmp_path: Path):
    """A 300-character CJK raw caption can exceed the worker's prompt limit: the row's reason names
    a setting the user can change, and ``--max-prompt-text-tokens`` (``caption.max_prompt_text_tokens``)
    lets it through (was: the reason named max_prompt_text_tokens, which no flag or setting took)."""
    from PIL import Image
    from typer.testing import CliRunner

    from recaption.cli import app

    src = tmp_path / "imgs"
    src.mkdir()
    Image.new("RGB", (64, 48), (10, 100, 200)).save(src / "tokyo.png")
    (src / "tokyo.txt").write_text("東京の夜景 " * 100, encoding="utf-8")
    Image.new("RGB", (48, 64), (200, 100, 10)).save(src / "cat.png")
    (src / "cat.txt").write_text("a cat on a mat")
    base = ["caption", str(src), "--model", tiny_llava_dir, "--max-new-tokens", "3", "--device", "cpu"]
    base += ["--executor", "local", "--prompt", "laion"]
    r = CliRunner().invoke(app, [*base[:2], str(tmp_path / "a"), *base[2:]])
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(tmp_path / "a").set_index("key")
    assert pd.isna(df.loc["cat", "error"])
    reason = df.loc["tokyo", "error"]
    assert reason.startswith("prompt too long") and "--max-prompt-text-tokens" in reason, reason
    r = CliRunner().invoke(
        app, [*base[:2], str(tmp_path / "b"), *base[2:], "--max-prompt-text-tokens", "2000"]
    )
    assert r.exit_code == 0, r.output
    assert pd.read_parquet(tmp_path / "b")["error"].isna().all()
