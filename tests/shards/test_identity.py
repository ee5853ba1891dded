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


# --- a sidecar or manifest that appears after the run (its absence is part of the identity) ---


def _index(src: Path, out: Path, executor: str = "local"):
    stage = IndexStage(source=open_source(str(src)))
    if executor == "ray":
        from recaption.runner import RayOptions, run_ray

        return run_ray(stage, str(out), RayOptions(num_workers=1, num_cpus=2), progress=False)
    return run_local(stage, str(out), progress=False)


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_a_caption_sidecar_added_after_the_run_redoes_its_shard(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, executor: str
):
    """img1.jpg had no sidecar when captured; img1.txt and img2.json added later must be read:
    before, the rerun said all done and img1 kept its empty raw caption."""
    src, out = tmp_path / "photos", tmp_path / "out"
    _folder_with_captions(src)
    (src / "img1.txt").unlink()
    assert _index(src, out, executor).ok
    assert _captions(out)["img1"] is None
    (src / "img1.txt").write_text("a late caption")
    with caplog.at_level("WARNING", logger="recaption"):
        second = _index(src, out, executor)
    assert [s["shard"] for s in second.done] == [0]
    assert any(
        f"{src / 'img1.txt'} appeared" in r.message and "redoing it" in r.message for r in caplog.records
    )
    assert _captions(out)["img1"] == "a late caption"
    (src / "img2.json").write_text(json.dumps({"source": "late"}))
    third = _index(src, out, executor)
    assert [s["shard"] for s in third.done] == [0]
    assert _index(src, out, executor).done == []  # nothing appeared since: nothing redone


@pytest.mark.parametrize("manifest", ["metadata.jsonl", "metadata.csv", "captions.json"])
def test_a_caption_manifest_added_after_the_run_redoes_the_shards_it_captions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, manifest: str
):
    src, out = tmp_path / "photos", tmp_path / "out"
    _folder_with_captions(src)
    for i in range(3):
        (src / f"img{i}.txt").unlink()
    assert _index(src, out).ok
    assert _captions(out)["img2"] is None
    rows = {f"img{i}.jpg": f"a cat {i}" for i in range(3)}
    if manifest == "metadata.jsonl":
        text = "".join(json.dumps({"file_name": f, "text": t}) + "\n" for f, t in rows.items())
    elif manifest == "metadata.csv":
        text = "file_name,text\n" + "".join(f"{f},{t}\n" for f, t in rows.items())
    else:
        text = json.dumps([{"image": f, "caption": t} for f, t in rows.items()])
    (src / manifest).write_text(text)
    with caplog.at_level("WARNING", logger="recaption"):
        again = _index(src, out)
    assert [s["shard"] for s in again.done] == [0]
    assert any(f"{src / manifest} appeared" in r.message for r in caplog.records)
    assert _captions(out)["img2"] == "a cat 2"
    assert _index(src, out).done == []


def test_a_manifest_in_one_subfolder_redoes_only_the_shards_of_that_folder(tmp_path: Path):
    """A manifest captions the images of its folder and below: one appearing in c/ redoes c's
    shard (and shard 0, whose failure rows report every manifest's problems), never b's."""
    from PIL import Image

    src, out = tmp_path / "photos", tmp_path / "out"
    for d in ("a", "b", "c"):
        (src / d).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8)).save(src / d / f"{d}{i}.jpg")
    source = open_source(str(src), shard_size=2)
    assert [len(s.files) for s in source.shards()] == [2, 2, 2]
    assert run_local(IndexStage(source=source), str(out), progress=False).ok
    (src / "c" / "metadata.jsonl").write_text(json.dumps({"file_name": "c1.jpg", "text": "a c"}) + "\n")
    again = run_local(IndexStage(source=open_source(str(src), shard_size=2)), str(out), progress=False)
    assert [s["shard"] for s in again.done] == [0, 2]
    assert _captions(out)["c/c1"] == "a c"


def test_a_sidecar_appearing_does_not_change_the_plan(tmp_path: Path):
    """The companions a shard reads are compared per shard, not through the plan digest: a new
    sidecar must redo its shard, not refuse the whole rerun as a different source."""
    from recaption.runner.base import plan_digest

    src = tmp_path / "photos"
    _folder_with_captions(src)
    (src / "img1.txt").unlink()
    before = plan_digest(open_source(str(src)).shards())
    (src / "img1.txt").write_text("late")
    shards = open_source(str(src)).shards()
    assert plan_digest(shards) == before
    assert str(src / "img1.txt") in shards[0].companions


# --- same size, same modification time, other bytes (cp -p, rsync -t, touch -r) on local disk ---


def _wds(src: Path, caption: str = "a red cat") -> Path:
    from tests.builders import wds_sample

    members = [m for i in range(3) for m in wds_sample(f"{i:05d}", f"{caption} {i}", seed=i)]
    return write_tar(src / "00000.tar", members)


def _replace_keeping_times(path: Path, data: bytes, how: str) -> None:
    """Put ``data`` at ``path`` as ``cp -p`` (rewritten in place: same inode) or ``rsync -t``
    (a new file renamed over it) do, with the old modification time set again."""
    import os

    st = path.stat()
    assert len(data) == st.st_size
    if how == "cp -p":
        with open(path, "r+b") as f:
            f.write(data)
    else:
        tmp = path.with_name(f".{path.name}.rsync")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def _wds_captions(out: Path) -> list[str]:
    return sorted(pd.read_parquet(out)["raw_caption"])


@pytest.mark.parametrize("how", ["cp -p", "rsync -t"])
@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_a_tar_replaced_with_the_same_size_and_mtime_is_redone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str, executor: str
):
    src, out = tmp_path / "src", tmp_path / "out"
    tar = _wds(src)
    assert _index(src, out, executor).ok
    assert _wds_captions(out)[0] == "a red cat 0"
    _replace_keeping_times(tar, tar.read_bytes().replace(b"a red cat", b"a red dog"), how)
    with caplog.at_level("WARNING", logger="recaption"):
        again = _index(src, out, executor)
    assert [s["shard"] for s in again.done] == [0]
    assert any(
        "00000.tar changed (same size and modification time, other content" in r.message
        for r in caplog.records
    )
    assert _wds_captions(out) == ["a red dog 0", "a red dog 1", "a red dog 2"]
    assert _index(src, out, executor).done == []


def test_a_sidecar_rewritten_with_its_mtime_kept_is_redone(tmp_path: Path):
    src, out = tmp_path / "photos", tmp_path / "out"
    _folder_with_captions(src)
    assert _index(src, out).ok
    _replace_keeping_times(src / "img0.txt", b"a red dog number 0", "cp -p")
    assert [s["shard"] for s in _index(src, out).done] == [0]
    assert _captions(out)["img0"] == "a red dog number 0"


def test_a_chmod_or_a_copy_with_the_same_bytes_is_not_redone_and_checked_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """chmod changes the ctime, rsync -t of identical bytes the inode too: neither changes the rows,
    so neither redoes the shard. The content is fingerprinted only then (lazily), and the record
    is brought up to date so the next rerun does not fingerprint it again."""
    import os

    from recaption.shards import identity

    src, out = tmp_path / "src", tmp_path / "out"
    tar = _wds(src)
    assert _index(src, out).ok
    calls: list[str] = []
    real = identity.fingerprint
    monkeypatch.setattr(identity, "fingerprint", lambda p, *a: calls.append(p) or real(p, *a))
    assert _index(src, out).done == [] and calls == []  # unchanged: stat only, nothing read
    os.chmod(tar, 0o600)
    with caplog.at_level("INFO", logger="recaption"):
        assert _index(src, out).done == []
    assert calls == [str(tar)]
    assert any("00000.tar" in r.message and "same content" in r.message for r in caplog.records)
    assert _index(src, out).done == [] and calls == [str(tar)]  # the record was refreshed
    _replace_keeping_times(tar, tar.read_bytes(), "rsync -t")  # the same bytes, a new inode
    assert _index(src, out).done == [] and len(calls) == 2


def test_local_identity_records_inode_ctime_and_a_fingerprint(tmp_path: Path):
    import os

    from recaption.shards.identity import fingerprint

    f = tmp_path / "a.tar"
    f.write_bytes(os.urandom(300_000))
    [ident] = shard_identity(InputShard(index=0, uri=str(f)))
    st = f.stat()
    assert (ident["ino"], ident["ctime_ns"]) == (st.st_ino, st.st_ctime_ns)
    assert ident["fp"] == fingerprint(str(f), st.st_size)
    data = bytearray(f.read_bytes())
    data[150_000] ^= 1  # a byte in the middle: outside what the fingerprint reads (documented)
    f.write_bytes(bytes(data))
    assert fingerprint(str(f), st.st_size) == ident["fp"]
    for at in (0, 299_999):  # a byte among the first or the last: another fingerprint
        changed = bytearray(data)
        changed[at] ^= 1
        f.write_bytes(bytes(changed))
        assert fingerprint(str(f), st.st_size) != ident["fp"], at


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_a_sidecar_added_after_a_pipeline_run_redoes_caption_nouns_and_features(
    tmp_path: Path, tiny_models: dict[str, str], executor: str, caplog: pytest.LogCaptureFixture
):
    """A photo folder captured with img5.txt missing; the sidecar is added: the caption shard
    holding img5 is redone with its raw caption, and so are the nouns and features made from it."""
    from recaption.pipeline.config import load_config
    from recaption.pipeline.run import run_pipeline
    from tests.builders import image_bytes

    src, out = tmp_path / "photos", tmp_path / "run"
    src.mkdir()
    for i in range(8):
        (src / f"img{i}.jpg").write_bytes(image_bytes(96, 72, seed=i))
        if i != 5:
            (src / f"img{i}.txt").write_text(f"a photo number {i}")
    raw = tiny_config_for(src, out, tiny_models, executor)
    raw["source"]["shard_size"] = 4
    cfg = load_config(raw)
    assert run_pipeline(cfg, progress=False).ok()
    (src / "img5.txt").write_text("a late caption")
    with caplog.at_level("INFO", logger="recaption"):
        result = run_pipeline(cfg, progress=False)
    assert result.ok()
    assert any(f"{src / 'img5.txt'} appeared" in r.message for r in caplog.records)
    for stage in ("caption", "nouns", "encode"):
        assert [s["shard"] for s in result.summaries[stage].done] == [1], stage
    caps = pd.read_parquet(out / "captions")
    assert dict(zip(caps["key"], caps["raw_caption"], strict=True))["img5"] == "a late caption"


def tiny_config_for(src: Path, out: Path, models: dict[str, str], executor: str) -> dict:
    from tests.pipeline.conftest import tiny_config

    return tiny_config(src, out, models, executor=executor)


def test_outputs_recorded_before_are_still_trusted(tmp_path: Path):
    """Stats written before this record (no inode, ctime, fingerprint, nor the note that every
    companion was listed) and a _stage.json naming the manifests (captions_from) still match:
    nothing is redone, nothing refused."""
    import os

    src, out = tmp_path / "photos", tmp_path / "out"
    _folder_with_captions(src)
    (src / "img1.txt").unlink()
    rows = [{"file_name": "img1.jpg", "text": "from the manifest"}]
    (src / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _index(src, out).ok
    sd = StageDir(str(out))
    stats = json.loads(Path(sd.stats(0)).read_text())
    stats.pop("input_companions_listed")
    for ident in stats["input_identity"]:
        for k in ("ino", "ctime_ns", "fp"):
            ident.pop(k, None)
    Path(sd.stats(0)).write_text(json.dumps(stats))
    stage = json.loads(Path(sd.stage_file).read_text())
    stage["fingerprint"]["source"]["captions_from"] = ["metadata.jsonl (file_name → text)"]
    Path(sd.stage_file).write_text(json.dumps(stage))
    os.chmod(src / "img0.jpg", 0o600)
    assert _index(src, out).done == []
    assert _captions(out)["img1"] == "from the manifest"


def test_an_sa1b_annotation_added_to_an_extracted_folder_redoes_its_shard(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """Extracted SA-1B: sa_11.jpg had no sa_11.json (its row warned "no annotation file"); the
    annotation put there since is read on the rerun."""
    src, out = tmp_path / "sa", tmp_path / "out"
    src.mkdir()
    for name, data in sam_member_pairs(10, 2):
        if name != "sa_11.json":
            (src / name).write_bytes(data)
    assert _index(src, out).ok
    pairs = dict(sam_member_pairs(10, 2))
    (src / "sa_11.json").write_bytes(pairs["sa_11.json"])
    with caplog.at_level("WARNING", logger="recaption"):
        again = _index(src, out)
    assert [s["shard"] for s in again.done] == [0]
    assert any(f"{src / 'sa_11.json'} appeared" in r.message for r in caplog.records)
    assert _index(src, out).done == []
