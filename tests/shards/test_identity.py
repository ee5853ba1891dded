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


def _folder_with_captions(root: Path, n: int = 3) -> None:
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(root / f"img{i}.jpg")
        (root / f"img{i}.txt").write_text(f"a red cat number {i}")


def _captions(out: Path) -> dict[str, str | None]:
    df = pd.read_parquet(out)
    return {k: (None if pd.isna(c) else c) for k, c in zip(df["key"], df["raw_caption"], strict=True)}


def test_an_edited_or_removed_caption_sidecar_redoes_its_shard(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """photo.jpg + photo.txt: the caption is part of the shard's input. Before, an edited .txt
    (here the same size: cat → dog) left the old caption in the output ("1 shard already done")."""
    src, out = tmp_path / "photos", tmp_path / "out"
    _folder_with_captions(src)
    assert run_local(IndexStage(source=open_source(str(src))), str(out), progress=False).ok
    assert _captions(out)["img0"] == "a red cat number 0"
    (src / "img0.txt").write_text("a red dog number 0")
    with caplog.at_level("WARNING", logger="recaption"):
        second = run_local(IndexStage(source=open_source(str(src))), str(out), progress=False)
    assert [s["shard"] for s in second.done] == [0]
    assert any("img0.txt changed" in r.message and "redoing it" in r.message for r in caplog.records)
    assert _captions(out)["img0"] == "a red dog number 0"
    (src / "img1.txt").unlink()
    third = run_local(IndexStage(source=open_source(str(src))), str(out), progress=False)
    assert [s["shard"] for s in third.done] == [0]
    assert _captions(out)["img1"] is None
    fourth = run_local(IndexStage(source=open_source(str(src))), str(out), progress=False)
    assert fourth.done == []  # nothing changed since: nothing redone


def test_an_edited_caption_manifest_redoes_the_shards_it_captions(tmp_path: Path):
    src, out = tmp_path / "photos", tmp_path / "out"
    _folder_with_captions(src)
    for i in range(3):
        (src / f"img{i}.txt").unlink()
    rows = [{"file_name": f"img{i}.jpg", "text": f"a cat {i}"} for i in range(3)]
    (src / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_local(IndexStage(source=open_source(str(src))), str(out), progress=False).ok
    assert _captions(out)["img2"] == "a cat 2"
    rows[2]["text"] = "a dog 2"
    (src / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = run_local(IndexStage(source=open_source(str(src))), str(out), progress=False)
    assert [s["shard"] for s in again.done] == [0]
    assert _captions(out)["img2"] == "a dog 2"


def test_a_removed_input_tar_is_named_when_the_rerun_is_refused(tmp_path: Path):
    """A vanished tar changes the plan, so the rerun is refused (nothing would line up): the
    message names the file, not only a changed plan digest."""
    from recaption.runner.base import OutputConflictError

    src, out = tmp_path / "src", tmp_path / "out"
    for t in range(3):
        write_tar(src / f"sa_{t:06d}.tar", sam_member_pairs(t * 10, 2))
    assert run_local(IndexStage(source=open_source(str(src))), str(out), progress=False).ok
    (src / "sa_000001.tar").unlink()
    with pytest.raises(
        OutputConflictError, match=r"1 input file\(s\) no longer in the source: .*sa_000001\.tar"
    ):
        run_local(IndexStage(source=open_source(str(src))), str(out), progress=False)
