"""The whole pipeline with tiny models: outputs, resume, refusal of changed settings, Ray = local."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from recaption.cli import app
from recaption.encoder import schema as S
from recaption.errors import ConfigError
from recaption.pipeline.config import apply_overrides, load_config, read_config
from recaption.pipeline.run import run_pipeline
from recaption.runner.base import OutputConflictError
from tests.pipeline.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def _parts(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*.parquet"))}


def assert_same_features(a: Path, b: Path) -> None:
    """Feature shards equal: every column exactly, but latents within float16 rounding.

    The VAE's convolutions on CPU sum in an order that depends on the thread count (this process
    versus a one-CPU Ray actor), so an ulp of float16 may differ; everything else must not.
    """
    import numpy as np
    import pyarrow.parquet as pq

    names = sorted(p.name for p in a.glob("part-*.parquet"))
    assert names == sorted(p.name for p in b.glob("part-*.parquet"))
    for name in names:
        ta, tb = pq.read_table(a / name), pq.read_table(b / name)
        assert ta.schema == tb.schema
        assert ta.schema.metadata == tb.schema.metadata
        for col in ta.column_names:
            if (
                col.startswith("vae_")
                and ta.schema.field(col).type == tb.schema.field(col).type
                and col.count("_") == 1
            ):
                for x, y in zip(ta.column(col).to_pylist(), tb.column(col).to_pylist(), strict=True):
                    np.testing.assert_allclose(
                        np.frombuffer(x, np.float16).astype(np.float32),
                        np.frombuffer(y, np.float16).astype(np.float32),
                        rtol=2e-3,
                        atol=2e-3,
                    )
            else:
                assert ta.column(col).equals(tb.column(col)), (name, col)


@pytest.fixture(scope="module")
def local_run(
    tmp_path_factory: pytest.TempPathFactory, wds_source: Path, tiny_models: dict[str, str]
) -> Path:
    out = tmp_path_factory.mktemp("run") / "local"
    result = run_pipeline(load_config(tiny_config(wds_source, out, tiny_models)), progress=False)
    assert result.ok()
    return out


def test_outputs_of_a_run(local_run: Path):
    caps = pd.read_parquet(local_run / "captions")
    assert len(caps) == 12
    assert caps.dense_caption.notna().all()
    assert caps.raw_caption.notna().all()
    nouns = pd.read_parquet(local_run / "nouns")
    assert {"raw_nouns", "dense_nouns", "raw_n_nouns", "dense_n_nouns"} <= set(nouns.columns)
    feats = sorted((local_run / "features").glob("part-*.parquet"))
    assert len(feats) == 3
    meta = S.validate_file(str(feats[0]), deep=True)
    assert meta.text is not None
    assert meta.text.fields == ["dense", "raw"]
    assert (local_run / "report" / "nouns.md").exists()
    summary = json.loads((local_run / "summary.json").read_text())
    assert summary["images"] == 12
    assert set(summary["stages"]) == {"caption", "nouns", "encode"}
    recorded = yaml.safe_load((local_run / "pipeline.yaml").read_text())
    assert recorded["caption"]["max_new_tokens"] == 12


def test_rerun_resumes_and_refuses_changed_settings(
    local_run: Path, wds_source: Path, tiny_models: dict[str, str]
):
    cfg = tiny_config(wds_source, local_run, tiny_models)
    cfg["caption"]["workers"] = 2  # speed settings may change
    result = run_pipeline(load_config(cfg), progress=False)
    assert all(not s.done for s in result.summaries.values())
    assert all(s.skipped == 3 for s in result.summaries.values())
    # this rerun did nothing, but summary.json still gives the whole output's totals
    summary = json.loads((local_run / "summary.json").read_text())
    assert summary["stages"]["caption"]["rows"] == 0
    assert summary["totals"]["caption"]["rows"] == 12 and summary["totals"]["caption"]["complete"]
    assert set(summary["totals"]) == {"caption", "nouns", "encode"}
    cfg["caption"]["max_new_tokens"] = 20
    with pytest.raises(OutputConflictError, match=r"caption.max_new_tokens: 12 → 20"):
        run_pipeline(load_config(cfg), progress=False)


@pytest.mark.slow
def test_ray_run_equals_local_run(
    local_run: Path, wds_source: Path, tiny_models: dict[str, str], tmp_path: Path
):
    out = tmp_path / "ray"
    result = run_pipeline(
        load_config(tiny_config(wds_source, out, tiny_models, executor="ray")), progress=False
    )
    assert result.ok()
    for stage in ("captions", "nouns"):
        assert _parts(out / stage) == _parts(local_run / stage), stage
    assert_same_features(out / "features", local_run / "features")


def test_unknown_key_and_wrong_type_fail_at_once(
    wds_source: Path, tiny_models: dict[str, str], tmp_path: Path
):
    cfg = tiny_config(wds_source, tmp_path / "o", tiny_models)
    cfg["caption"]["modle"] = "x"
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert "caption.modle" in str(e.value)
    assert "'model'" in str(e.value)
    cfg = tiny_config(wds_source, tmp_path / "o", tiny_models)
    cfg["encode"]["resolutions"] = "big"
    with pytest.raises(ConfigError, match=r"encode\.resolutions"):
        load_config(cfg)
    for split in (False, True):  # both ways of planning encode name the pipeline key
        cfg = tiny_config(wds_source, tmp_path / "o", tiny_models)
        cfg["encode"].update(resolutions=[300], split_workers=split)
        with pytest.raises(ConfigError, match=r"encode\.resolution.*300.*256, 512, 1024, 2048"):
            run_pipeline(load_config(cfg), progress=False)
    for key, value in (("resolutions", []), ("workers", 0)):
        cfg = tiny_config(wds_source, tmp_path / "o", tiny_models)
        cfg["encode"][key] = value  # not silently the default, nor "as many as fit"
        with pytest.raises(ConfigError, match=rf"encode\.{key}"):
            load_config(cfg)


@pytest.mark.parametrize("name", ["sam-llava", "laion-llava", "pixart-alpha", "pixart-sigma", "tiny-offline"])
def test_pipeline_files_validate(name: str):
    cfg = load_config(read_config(str(ROOT / "pipelines" / f"{name}.yaml")))
    assert cfg.output


def test_presets_reproduce_pixart():
    sam = load_config(read_config(str(ROOT / "pipelines" / "sam-llava.yaml")))
    assert sam.caption.prompt == "sam"
    laion = load_config(read_config(str(ROOT / "pipelines" / "laion-llava.yaml")))
    assert laion.caption.prompt == "laion"
    alpha = load_config(read_config(str(ROOT / "pipelines" / "pixart-alpha.yaml")))
    sigma = load_config(read_config(str(ROOT / "pipelines" / "pixart-sigma.yaml")))
    from recaption.encoder.stage import encode_configs

    ta, va = encode_configs(alpha.encode.preset)
    ts, vs = encode_configs(sigma.encode.preset)
    assert (ta.resolved_max_length, ts.resolved_max_length) == (120, 300)
    assert (ta.resolved_clean, ts.resolved_clean) == (True, False)
    assert va.model_id == "stabilityai/sd-vae-ft-ema"
    assert "sdxl" in vs.model_id


def test_set_overrides():
    data = apply_overrides({"caption": {"model": "a"}}, ["caption.model=b", "encode.resolutions=[256, 512]"])
    assert data["caption"]["model"] == "b"
    assert data["encode"]["resolutions"] == [256, 512]
    with pytest.raises(ConfigError, match="--set"):
        apply_overrides({}, ["caption.model"])


def test_cli_run_with_flags(wds_source: Path, tiny_models: dict[str, str], tmp_path: Path):
    cfg_file = tmp_path / "p.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_config("unused", "unused", tiny_models)))
    out = tmp_path / "cli"
    r = CliRunner().invoke(
        app,
        [
            "run",
            str(cfg_file),
            "--source",
            str(wds_source),
            "--output",
            str(out),
            "--set",
            "nouns.enabled=false",
            "--set",
            "encode.enabled=false",
            "--json",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output[r.output.index("{") :])
    assert set(d["stages"]) == {"caption"}
    assert d["images"] == 12
    r = CliRunner().invoke(app, ["run", "--help-config"])
    assert "max_new_tokens" in r.output


def test_file_size_target_reaches_the_encode_stages(
    wds_source: Path, tiny_models: dict[str, str], tmp_path: Path
):
    from recaption.pipeline.config import semantic
    from recaption.pipeline.run import plan

    cfg = tiny_config(wds_source, tmp_path / "o", tiny_models)
    cfg["encode"].update(max_file_size="512MB", max_file_rows=1000, split_workers=True)
    p = plan(load_config(cfg))
    for name in ("encode_text", "encode"):
        stage = p.stages[name].stage
        assert (stage.max_file_rows, stage.max_file_bytes) == (1000, 512_000_000), name
    # file layout, not results: a resumed run may change it
    assert not any(k.startswith("encode.max_file") for k in semantic(load_config(cfg)))
    cfg["encode"]["max_file_size"] = "a lot"
    with pytest.raises(ConfigError, match=r"encode\.max_file_size"):
        load_config(cfg)


def test_a_rejected_setting_is_never_recorded(wds_source: Path, tiny_models: dict[str, str], tmp_path: Path):
    """Settings are checked (source opened, models' options, nouns columns) before pipeline.yaml
    is written, so the corrected rerun is not refused for differing from the rejected one."""
    out = tmp_path / "o"
    for section, key, value, named in (
        ("source", "path", str(tmp_path / "nowhere"), "nowhere"),
        ("caption", "dtype", "bf16", "caption.dtype"),
        ("nouns", "columns", ["dense_captions"], "nouns.columns"),
        ("nouns", "pos", "VERB", "nouns.pos"),
        # a model folder that is not there: found now, not after the captioning
        ("encode", "t5_model", str(tmp_path / "no-t5"), "encode.t5_model"),
        ("caption", "model", str(tmp_path / "no-llava"), "caption.model"),
    ):
        cfg = tiny_config(wds_source, out, tiny_models)
        cfg[section][key] = value
        with pytest.raises((ConfigError, FileNotFoundError)) as e:
            run_pipeline(load_config(cfg), progress=False)
        assert named in str(e.value)
        assert not (out / "pipeline.yaml").exists()
    # nouns.columns names the caption columns it could have used
    cfg = tiny_config(wds_source, out, tiny_models)
    cfg["nouns"]["columns"] = ["dense_captions"]
    with pytest.raises(ConfigError, match="dense_caption"):
        run_pipeline(load_config(cfg), progress=False)


def test_settings_of_a_stage_with_nothing_finished_may_change(
    wds_source: Path, tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from recaption.pipeline.run import check_or_record_config, plan

    out = tmp_path / "o"
    cfg = tiny_config(wds_source, out, tiny_models)
    check_or_record_config(plan(load_config(cfg)))
    # the same run through other spellings of its paths
    import os

    monkeypatch.chdir(tmp_path)
    cfg["source"]["path"] = os.path.relpath(wds_source, tmp_path) + "/"
    cfg["output"] = "o/"
    check_or_record_config(plan(load_config(cfg)))
    # nouns has no finished shard: its settings may change
    cfg["nouns"]["min_length"] = 3
    check_or_record_config(plan(load_config(cfg)))
    # once a nouns shard is finished they may not
    (out / "nouns" / "_stats").mkdir(parents=True)
    (out / "nouns" / "_stats" / "part-00000.json").write_text("{}")
    cfg["nouns"]["min_length"] = 4
    with pytest.raises(OutputConflictError, match=r"nouns.min_length: 3 → 4"):
        check_or_record_config(plan(load_config(cfg)))
    # a caption setting is still free while no caption shard is finished
    cfg["nouns"]["min_length"] = 3
    cfg["caption"]["max_new_tokens"] = 7
    check_or_record_config(plan(load_config(cfg)))
