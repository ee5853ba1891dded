"""Changed inputs are noticed (issue 10.2): each shard records its input's identity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from recaption.index import IndexStage
from recaption.readers import open_source
from recaption.readers.base import InputShard
from recaption.runner import run_local
from recaption.shards.identity import changed_shards, shard_identity
from recaption.shards.layout import StageDir
from tests.builders import sam_member_pairs, write_tar


def _truncate(src: Path, dst: Path, keep: float = 0.5) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])


def test_a_replaced_input_tar_is_redone_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    full, src, out = tmp_path / "full", tmp_path / "src", tmp_path / "out"
    for t in range(2):
        write_tar(full / f"sa_{t:06d}.tar", sam_member_pairs(t * 10, 6))
    shutil.copytree(full, src)
    _truncate(full / "sa_000000.tar", src / "sa_000000.tar")  # a partial transfer
    first = run_local(IndexStage(source=open_source(str(src))), str(out), progress=False)
    assert first.ok
    rows_before = {s["shard"]: s["rows"] for s in StageDir(str(out)).read_stats()}
    assert rows_before[0] < 6
    shutil.copy(full / "sa_000000.tar", src / "sa_000000.tar")  # the complete file replaces it
    with caplog.at_level("WARNING", logger="recaption"):
        second = run_local(IndexStage(source=open_source(str(src))), str(out), progress=False)
    assert [s["shard"] for s in second.done] == [0]
    assert any(
        "sa_000000.tar changed (size" in r.message and "redoing it" in r.message for r in caplog.records
    )
    df = pd.read_parquet(out)
    assert len(df) == 12
    third = run_local(IndexStage(source=open_source(str(src))), str(out), progress=False)
    assert third.done == [] and third.skipped == 2  # unchanged inputs are not redone


def test_identity_of_a_rewritten_file_of_the_same_size_differs(tmp_path: Path):
    f = tmp_path / "a.tar"
    f.write_bytes(b"x" * 100)
    shard = InputShard(index=0, uri=str(f))
    old = shard_identity(shard)
    import os

    os.utime(f, ns=(1, 1))
    changed, vanished = changed_shards({0: old}, {0: shard})
    assert list(changed) == [0] and "version" in changed[0] and not vanished
    f.unlink()
    changed, vanished = changed_shards({0: old}, {0: shard})
    assert not changed and vanished == {0: f"{f} no longer exists"}


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_a_replaced_tar_is_recaptioned_and_its_nouns_and_features_redone(
    tmp_path: Path, tiny_models: dict[str, str], executor: str, caplog: pytest.LogCaptureFixture
):
    """Issue 10.2's story: a truncated 00000.tar gave some rows and failures; after the complete
    file replaces it, the rerun captions every sample, and the stages fed by caption shard 0
    (nouns, features) are redone too (today: "0 new, 1 done" and samples 3-5 never captioned)."""
    from recaption.pipeline.config import load_config
    from recaption.pipeline.run import run_pipeline
    from tests.pipeline.conftest import make_webdataset, tiny_config

    full = make_webdataset(tmp_path / "full", n=8, per_shard=4)
    src = tmp_path / "src"
    shutil.copytree(full, src)
    _truncate(full / "00000.tar", src / "00000.tar", keep=0.45)
    out = tmp_path / "run"
    cfg = load_config(tiny_config(src, out, tiny_models, executor=executor))
    assert run_pipeline(cfg, progress=False).ok()
    caps = StageDir(str(out / "captions"))
    assert caps.read_stats()[0]["rows"] < 4
    shutil.copy(full / "00000.tar", src / "00000.tar")
    with caplog.at_level("INFO", logger="recaption"):
        result = run_pipeline(cfg, progress=False)
    assert result.ok()
    assert any("00000.tar changed" in r.message for r in caplog.records)
    for folder, stage in (("captions", "caption"), ("nouns", "nouns"), ("features", "encode")):
        stats = {s["shard"]: s for s in StageDir(str(out / folder)).read_stats()}
        assert (stats[0]["rows"], stats[1]["rows"]) == (4, 4), folder
        assert [s["shard"] for s in result.summaries[stage].done] == [0], stage
    assert json.loads((out / "summary.json").read_text())["totals"]["caption"]["rows"] == 8
