"""``encode --drop-flagged``: rows whose captions are flagged are left out of the features, each
with a manifest row and a counter by reason; and ``--fields`` takes any caption column."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recaption.captioner.model import CaptionerConfig
from recaption.captioner.stage import CaptionStage
from recaption.encoder.stage import EncodeStage, encode_configs
from recaption.errors import ConfigError
from recaption.readers import open_source
from recaption.runner import run_local
from recaption.shards.manifest import read_failures
from tests.builders import image_bytes, wds_sample, write_tar

# key -> (dense finish_reason, dense repetition, dense prompt_fallback, short_caption finish_reason)
FLAGS = {
    "000000000": ("stop", False, False, "stop"),  # clean
    "000000001": ("length", False, False, "stop"),
    "000000002": ("stop", True, False, "stop"),
    "000000003": ("stop", False, True, "stop"),  # fallback only
    "000000004": ("stop", False, False, "length"),  # the short caption hit the limit
    "000000005": ("length", True, False, "stop"),
}


@pytest.fixture(scope="module")
def flagged_captions(tmp_path_factory: pytest.TempPathFactory, tiny_llava_dir: str) -> Path:
    """Real caption shards (two prompts) whose flags are then set per row as in FLAGS."""
    d = tmp_path_factory.mktemp("drop")
    samples = []
    for i in range(6):
        samples += wds_sample(f"{i:09d}", f"a photo number {i}", seed=i, img=image_bytes(64, 64, seed=i))
    write_tar(d / "wds" / "00000.tar", samples)
    out = d / "captions"
    stage = CaptionStage(
        source=open_source(str(d / "wds")),
        model=CaptionerConfig(model=tiny_llava_dir, device="cpu", max_new_tokens=4, batch_size=6),
        prompt=["dense_caption=laion", "short_caption=Describe this image in one sentence."],
    )
    assert run_local(stage, str(out), progress=False).ok
    path = out / "part-00000.parquet"
    table = pq.read_table(path)
    keys = table.column("key").to_pylist()
    cols = {
        "finish_reason": pa.array([FLAGS[k][0] for k in keys]),
        "repetition": pa.array([FLAGS[k][1] for k in keys]),
        "prompt_fallback": pa.array([FLAGS[k][2] for k in keys]),
        "short_caption_finish_reason": pa.array([FLAGS[k][3] for k in keys]),
    }
    for name, values in cols.items():
        table = table.set_column(table.schema.get_field_index(name), name, values)
    pq.write_table(table, path)  # file metadata (the stage fingerprint) kept: table.schema has it
    return out


def stage(captions: Path, t5: str, vae: str, **kw) -> EncodeStage:
    text, image = encode_configs(
        "alpha", t5_model=t5, vae_model=vae, resolutions=(256,), device="cpu", t5_hidden_size=32
    )
    return EncodeStage(captions=str(captions), text=text, image=image, **kw)


def test_drop_flagged_rows_are_listed_and_counted(
    flagged_captions: Path, tiny_t5_dir: str, tiny_vae_model_dir: str, tmp_path: Path
):
    out = tmp_path / "features"
    s = stage(
        flagged_captions,
        tiny_t5_dir,
        tiny_vae_model_dir,
        fields=("dense", "short_caption"),
        drop_flagged=("length", "repetition"),
    )
    summary = run_local(s, str(out), progress=False)
    df = pd.read_parquet(out)
    assert sorted(df.key) == ["000000000", "000000003"]
    assert {"t5_dense", "t5_short_caption"} <= set(df.columns)  # any caption column can be encoded
    failures = read_failures(str(out)).set_index("key")
    dropped = failures[failures.reason.str.startswith("dropped by --drop-flagged")]
    assert sorted(dropped.index) == ["000000001", "000000002", "000000004", "000000005"]
    assert "short_caption hit the token limit" in dropped.loc["000000004", "reason"]
    assert dropped.loc["000000005", "reason"].startswith("dropped by --drop-flagged length,repetition")
    # the summary groups the dropped rows by reason, the shard's counters count each flag
    reasons = summary.to_dict()["error_reasons"]
    assert reasons == {
        "dropped by --drop-flagged length": 2,
        "dropped by --drop-flagged repetition": 1,
        "dropped by --drop-flagged length,repetition": 1,
    }
    import json

    counters = json.loads((out / "_stats" / "part-00000.json").read_text())["counters"]
    assert counters["dropped_length"] == 3 and counters["dropped_repetition"] == 2
    # without the option every row is encoded
    all_out = tmp_path / "all"
    run_local(stage(flagged_captions, tiny_t5_dir, tiny_vae_model_dir), str(all_out), progress=False)
    assert len(pd.read_parquet(all_out)) == 6
    # fallback drops its row too
    fb = tmp_path / "fb"
    run_local(
        stage(flagged_captions, tiny_t5_dir, tiny_vae_model_dir, drop_flagged=("fallback",)),
        str(fb),
        progress=False,
    )
    assert "000000003" not in set(pd.read_parquet(fb).key)
    # resume: an interrupted shard is redone the same; another drop list is refused, not mixed
    before = (out / "part-00000.parquet").read_bytes()
    (out / "_stats" / "part-00000.json").unlink()
    (out / "part-00000.parquet").unlink()
    again = stage(
        flagged_captions,
        tiny_t5_dir,
        tiny_vae_model_dir,
        fields=("dense", "short_caption"),
        drop_flagged=("length", "repetition"),
    )
    assert [d["shard"] for d in run_local(again, str(out), progress=False).done] == [0]
    assert (out / "part-00000.parquet").read_bytes() == before
    from recaption.runner.base import OutputConflictError

    with pytest.raises(OutputConflictError, match="drop_flagged"):
        run_local(
            stage(
                flagged_captions,
                tiny_t5_dir,
                tiny_vae_model_dir,
                fields=("dense", "short_caption"),
                drop_flagged=("length",),
            ),
            str(out),
            progress=False,
        )


def test_bad_drop_flag_and_unknown_caption_column_fail_at_once(flagged_captions: Path):
    with pytest.raises(ConfigError, match=r"--drop-flagged.*'lenght'.*length.*repetition.*fallback.*error"):
        EncodeStage(captions=str(flagged_captions), drop_flagged=("lenght",))
    with pytest.raises(ConfigError, match=r"--fields.*long_caption.*short_caption"):
        EncodeStage(captions=str(flagged_captions), fields=("long_caption",))


def test_encode_command_drop_flagged(
    flagged_captions: Path, tiny_t5_dir: str, tiny_vae_model_dir: str, tmp_path
):
    from typer.testing import CliRunner

    from recaption.cli import app

    out = tmp_path / "f"
    args = [
        "encode",
        str(flagged_captions),
        str(out),
        "--t5-model",
        tiny_t5_dir,
        "--vae-model",
        tiny_vae_model_dir,
    ]
    args += ["--t5-hidden-size", "32", "--resolutions", "256", "--device", "cpu", "--executor", "local"]
    r = CliRunner().invoke(app, [*args, "--drop-flagged", "repetition", "--json"])
    assert r.exit_code == 0, r.output
    assert sorted(pd.read_parquet(out).key) == ["000000000", "000000001", "000000003", "000000004"]
    r = CliRunner().invoke(app, [*args, "--drop-flagged", "loops"])
    assert r.exit_code != 0 and "--drop-flagged" in r.output


def test_a_second_caption_column_becomes_sigmas_alternative_caption(
    flagged_captions: Path, tiny_t5_dir: str, tiny_vae_model_dir: str, tmp_path: Path
):
    import json

    from recaption.pixart.export import export_pixart

    out = tmp_path / "features"
    s = stage(flagged_captions, tiny_t5_dir, tiny_vae_model_dir, fields=("dense", "short_caption"))
    assert run_local(s, str(out), progress=False).ok
    summary = export_pixart(
        str(out), str(tmp_path / "px"), alt_caption_field="short_caption", layouts=("sigma",)
    )
    # the texts T5 encoded (the captions, control characters removed)
    feats = pd.read_parquet(out).set_index("key")
    items = json.loads(Path(summary.data_info[0]).read_text())
    assert len(items) == 6
    for it in items:
        key = Path(it["path"]).stem
        assert it["prompt"] == feats.loc[key, "t5_dense_text"]
        assert it["sharegpt4v"] == feats.loc[key, "t5_short_caption_text"]
    assert [it["sharegpt4v"] for it in items] != [it["prompt"] for it in items]


def test_split_workers_vae_half_drops_the_rows_the_t5_half_dropped(
    flagged_captions: Path, tiny_t5_dir: str, tiny_vae_model_dir: str, tmp_path: Path
):
    """``encode.split_workers``: the VAE-only stage reads the same caption columns' flags as the T5
    stage. Was: it read dense_caption's alone, so a row dropped for its short caption's length came
    out as an error "no T5 features for this key", and the summary counted one drop fewer."""
    text, image = encode_configs(
        "alpha",
        t5_model=tiny_t5_dir,
        vae_model=tiny_vae_model_dir,
        resolutions=(256,),
        device="cpu",
        t5_hidden_size=32,
    )
    kw = {"fields": ("dense", "short_caption"), "drop_flagged": ("length",)}
    t_out, out = tmp_path / "text", tmp_path / "features"
    assert run_local(EncodeStage(captions=str(flagged_captions), text=text, image=None, **kw), str(t_out)).ok
    res = run_local(
        EncodeStage(captions=str(flagged_captions), text=None, image=image, text_from=str(t_out), **kw),
        str(out),
        progress=False,
    )
    assert res.error_reasons() == {"dropped by --drop-flagged length": 3}
    failures = read_failures(str(out)).set_index("key")
    assert "short_caption hit the token limit" in failures.loc["000000004", "reason"]
    assert sorted(pd.read_parquet(out).key) == ["000000000", "000000002", "000000003"]


def test_a_failed_second_caption_is_not_encoded_as_an_empty_one(
    flagged_captions: Path, tiny_t5_dir: str, tiny_vae_model_dir: str, tmp_path: Path
):
    """A row whose short_caption failed (its image and dense caption fine) fails in encode, with
    the caption's error (was: encoded as an empty caption with a warning "short_caption caption is
    empty", i.e. trained on "" as its short caption)."""
    import shutil

    caps = tmp_path / "captions"
    shutil.copytree(flagged_captions, caps)
    path = caps / "part-00000.parquet"
    table = pq.read_table(path)
    keys = table.column("key").to_pylist()
    bad = "000000000"
    for name, value in (("short_caption", None), ("short_caption_error", "generation failed: boom")):
        col = pa.array(
            [value if k == bad else v for k, v in zip(keys, table.column(name).to_pylist(), strict=True)]
        )
        table = table.set_column(table.schema.get_field_index(name), name, col.cast(pa.string()))
    table = table.set_column(
        table.schema.get_field_index("short_caption_finish_reason"),
        "short_caption_finish_reason",
        pa.array(["error" if k == bad else "stop" for k in keys]),
    )
    pq.write_table(table, path)
    out = tmp_path / "features"
    res = run_local(stage(caps, tiny_t5_dir, tiny_vae_model_dir, fields=("dense", "short_caption")), str(out))
    assert bad not in set(pd.read_parquet(out).key)
    failures = read_failures(str(out)).set_index("key")
    assert failures.loc[bad, "severity"] == "error"
    assert "short_caption captioning failed (generation failed: boom)" in failures.loc[bad, "reason"]
    assert res.to_dict()["warning_reasons"].get("short_caption caption is empty") is None
    # split workers: the VAE half fails the same row with the same reason (not "no T5 features")
    text, image = encode_configs(
        "alpha",
        t5_model=tiny_t5_dir,
        vae_model=tiny_vae_model_dir,
        resolutions=(256,),
        device="cpu",
        t5_hidden_size=32,
    )
    kw = {"fields": ("dense", "short_caption")}
    t_out, v_out = tmp_path / "t", tmp_path / "v"
    assert run_local(
        EncodeStage(captions=str(caps), text=text, image=None, **kw), str(t_out), progress=False
    ).ok
    run_local(
        EncodeStage(captions=str(caps), text=None, image=image, text_from=str(t_out), **kw),
        str(v_out),
        progress=False,
    )
    v_fail = read_failures(str(v_out)).set_index("key")
    assert list(v_fail.index) == [bad]
    assert "short_caption captioning failed" in v_fail.loc[bad, "reason"]
