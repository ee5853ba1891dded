from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recaption.errors import ConfigError, MissingColumnsError, SourceError
from recaption.readers import Failure, ImageOpener, ImageRef, RefError, Sample, open_source
from recaption.readers.folder import FolderSource
from recaption.readers.sam import SamSource
from recaption.readers.table import TableSource
from recaption.readers.webdataset import WebDatasetSource
from tests.builders import (
    image_bytes,
    sam_json,
    sam_member_pairs,
    shared,
    truncated_jpeg,
    wds_sample,
    write_img2dataset_parquet,
    write_tar,
)


def split(items):
    samples = [i for i in items if isinstance(i, Sample)]
    failures = [i for i in items if isinstance(i, Failure)]
    return samples, failures


# ---------------------------------------------------------------- SA-1B
@pytest.fixture
def sam_dir(tmp_path: Path) -> Path:
    d = tmp_path / "sa1b"
    write_tar(d / "sa_000000.tar", sam_member_pairs(1, 3))
    bad = sam_member_pairs(10, 1) + [
        ("sa_11.jpg", b""),  # zero bytes
        ("sa_11.json", sam_json(11, 10, 10)),
        ("sa_12.jpg", truncated_jpeg()),
        ("sa_12.json", b"{not json"),  # unparsable sidecar
        ("../sa_13.jpg", image_bytes()),  # path traversal
        ("sa_10.jpg", image_bytes(seed=3)),  # duplicate key, not consecutive
        ("sa_10.json", sam_json(10, 64, 48)),
    ]
    write_tar(d / "sa_000001.tar", bad)
    write_tar(d / "sa_000002.tar", [])  # empty shard
    return d


def test_sam_tars_counts_keys_sizes_and_refs(sam_dir: Path):
    src = open_source(str(sam_dir))
    assert isinstance(src, SamSource) and src.kind == "sam"
    shards = src.shards()
    assert [s.index for s in shards] == [0, 1, 2]
    samples, failures = split(list(src.read_shard(shards[0])))
    assert [s.key for s in samples] == ["sa_1", "sa_2", "sa_3"]
    assert not failures
    s = samples[0]
    assert s.width and s.height and s.meta["sam_image_id"] == 1 and s.meta["sam_annotations"] == 3
    # the reference reopens exactly the same bytes with one ranged read
    assert s.ref is not None and s.ref.offset > 0
    assert ImageOpener().read(s.ref) == s.data


def test_sam_bad_members_get_reasons(sam_dir: Path):
    src = open_source(str(sam_dir))
    samples, failures = split(list(src.read_shard(src.shards()[1])))
    assert [s.key for s in samples] == ["sa_10", "sa_11", "sa_12"]
    reasons = " | ".join(f.reason for f in failures)
    assert "would resolve outside the shard" in reasons
    assert "duplicate key 'sa_10'" in reasons
    s12 = next(s for s in samples if s.key == "sa_12")
    assert any("not valid JSON" in w for w in s12.warnings)
    # empty shard: a warning row naming the shard
    _, f2 = split(list(src.read_shard(src.shards()[2])))
    assert len(f2) == 1 and "no samples" in f2[0].reason and f2[0].severity == "warning"


def test_missing_shard_is_a_failure_not_a_crash(sam_dir: Path):
    src = open_source(str(sam_dir))
    (sam_dir / "sa_000000.tar").unlink()
    _, failures = split(list(src.read_shard(src.shards()[0])))
    assert len(failures) == 1 and "shard not found" in failures[0].reason


def test_truncated_tar_keeps_what_was_read(tmp_path: Path):
    path = write_tar(tmp_path / "sa_000000.tar", sam_member_pairs(1, 4))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    src = open_source(str(path))
    samples, failures = split(list(src.read_shard(src.shards()[0])))
    assert 1 <= len(samples) < 4
    assert any("truncated or corrupt" in f.reason for f in failures)


def test_sam_folder_with_captions_dir(tmp_path: Path):
    img_dir, cap_dir = tmp_path / "images", tmp_path / "captions"
    img_dir.mkdir()
    cap_dir.mkdir()
    for name, data in sam_member_pairs(1, 3):
        (img_dir / name).write_bytes(data)
    (cap_dir / "sa_1.txt").write_text("A dog on a beach.")
    (cap_dir / "sa_2.txt").write_bytes(b"caf\xe9 sign")  # not UTF-8
    src = open_source(str(img_dir), captions_dir=str(cap_dir), shard_size=2)
    assert isinstance(src, SamSource)
    assert [len(s.files) for s in src.shards()] == [2, 1]
    samples = [x for sh in src.shards() for x in src.read_shard(sh) if isinstance(x, Sample)]
    by = {s.key: s for s in samples}
    assert by["sa_1"].caption == "A dog on a beach."
    assert by["sa_2"].caption == "caf\ufffd sign" and "not valid UTF-8" in by["sa_2"].warnings[0]
    assert by["sa_3"].caption is None and "no caption file" in by["sa_3"].warnings[0]
    assert by["sa_1"].width is not None


# ---------------------------------------------------------------- webdataset
def test_webdataset_tars(tmp_path: Path):
    d = tmp_path / "wds"
    write_tar(
        d / "00000.tar",
        wds_sample("000000000", "a red car", 1)
        + wds_sample("000000001", b"bad \xff\xfe utf8", 2)
        + [("000000002.txt", b"caption without image")]
        + wds_sample("000000003", "a cat", 3, img=b"GIF89a not really"),
    )
    write_tar(d / "00001.tar", wds_sample("000010000", "x", 4))
    (d / "00000.parquet").write_bytes(b"img2dataset metadata sidecar, ignored")
    (d / "00000_stats.json").write_text("{}")
    src = open_source(str(d))
    assert isinstance(src, WebDatasetSource)
    assert len(src.shards()) == 2
    samples, failures = split(list(src.iter_samples()))
    assert [s.key for s in samples] == ["000000000", "000000001", "000000003", "000010000"]
    assert samples[0].caption == "a red car" and samples[0].meta["status"] == "success"
    assert "not valid UTF-8" in samples[1].warnings[0]
    assert len(failures) == 1 and "no image file for key '000000002'" in failures[0].reason


# ---------------------------------------------------------------- parquet
def test_img2dataset_parquet_with_failed_rows(tmp_path: Path):
    rows = [
        {"key": f"{i:09d}", "txt": f"caption {i}", "jpg": image_bytes(32, 32, seed=i), "status": "success"}
        for i in range(10)
    ]
    rows[3] = {"key": "000000003", "jpg": None, "status": "failed_to_download", "error_message": "HTTP 404"}
    rows[7]["key"] = "000000006"  # duplicate key
    path = write_img2dataset_parquet(tmp_path / "00000.parquet", rows)
    src = open_source(str(path))
    assert isinstance(src, TableSource) and src.kind == "parquet" and src.image_column == "jpg"
    samples, failures = split(list(src.iter_samples()))
    assert len(samples) == 8
    reasons = [f.reason for f in failures]
    assert any("HTTP 404" in r and "failed_to_download" in r for r in reasons)
    assert any("duplicate key '000000006'" in r for r in reasons)
    opener = ImageOpener()
    for s in samples:
        assert s.ref is not None and opener.read(s.ref) == s.data


def test_row_range_shards_read_only_their_rows(tmp_path: Path):
    rows = [{"key": f"k{i:03d}", "txt": str(i), "jpg": image_bytes(16, 16, seed=i)} for i in range(23)]
    path = write_img2dataset_parquet(tmp_path / "x.parquet", rows)
    src = open_source(str(path), shard_size=10)
    shards = src.shards()
    assert [(s.start, s.stop) for s in shards] == [(0, 10), (10, 20), (20, 23)]
    keys = [x.key for sh in shards for x in src.read_shard(sh)]
    assert keys == [f"k{i:03d}" for i in range(23)]


def test_laion_metadata_parquet_is_captions_only():
    path = shared("laion", "img2dataset_test_1000.parquet")
    src = open_source(str(path))
    assert src.kind == "table" and not src.has_images
    samples = [s for s in src.iter_samples() if isinstance(s, Sample)]
    assert len(samples) == 1000
    assert samples[0].caption and samples[0].ref is None and "URL" in samples[0].meta


def test_missing_text_column_names_available(tmp_path: Path):
    path = shared("laion", "img2dataset_test_1000.parquet")
    with pytest.raises(MissingColumnsError) as e:
        open_source(str(path), text_column="caption_dense")
    assert "'caption_dense'" in str(e.value) and "'TEXT'" in str(e.value) and "'URL'" in str(e.value)


def test_jsonl_table(tmp_path: Path):
    p = tmp_path / "caps.jsonl"
    p.write_text("\n".join(json.dumps({"id": i, "IIW": f"dense caption {i}"}) for i in range(5)))
    src = open_source(str(p), text_column="IIW")
    samples = list(src.iter_samples())
    assert [s.caption for s in samples] == [f"dense caption {i}" for i in range(5)]


# ---------------------------------------------------------------- folders
def test_plain_folder_with_sidecars(tmp_path: Path):
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    (d / "a.jpg").write_bytes(image_bytes(seed=1))
    (d / "a.txt").write_text("a caption ")
    (d / "sub" / "b.png").write_bytes(image_bytes(fmt="PNG"))
    (d / "sub" / "b.json").write_text('{"caption": "from json", "source": "x"}')
    (d / "c.jpg").write_bytes(b"")  # read fine, fails at decode
    (d / "c.jpeg").write_bytes(image_bytes(seed=2))  # same key as c.jpg
    (d / "notes.md").write_text("ignored")
    src = open_source(str(d), shard_size=2)
    assert isinstance(src, FolderSource) and src.kind == "folder"
    samples, failures = split(list(src.iter_samples()))
    assert {s.key for s in samples} == {"a", "c", "sub/b"}
    by = {s.key: s for s in samples}
    assert by["a"].caption == "a caption" and by["sub/b"].caption == "from json"
    errors = [f for f in failures if f.severity == "error"]
    assert len(errors) == 1 and "duplicate key 'c'" in errors[0].reason
    # every other file is accounted for: notes.md is listed with why it was not read
    (listed,) = [f for f in failures if f.severity == "warning"]
    assert listed.uri.endswith("notes.md") and "neither an image" in listed.reason


def test_an_option_the_layout_cannot_use_is_refused(tmp_path: Path):
    """--captions-dir on a plain folder or --text-column on tars would be dropped without a word."""
    d = tmp_path / "photos"
    d.mkdir()
    (d / "a.jpg").write_bytes(image_bytes(seed=1))
    caps = tmp_path / "caps"
    caps.mkdir()
    with pytest.raises(ConfigError, match=r"--captions-dir.*SA-1B sources only.*folder source"):
        open_source(str(d), captions_dir=str(caps))
    with pytest.raises(ConfigError, match=r"--text-column.*table sources only"):
        open_source(str(d), text_column="TEXT")
    write_tar(tmp_path / "wds" / "00000.tar", wds_sample("000000000", "a cat", seed=0))
    with pytest.raises(ConfigError, match=r"--text-column.*webdataset source"):
        open_source(str(tmp_path / "wds"), text_column="TEXT")


def test_img2dataset_files_output_shards_by_folder(tmp_path: Path):
    d = tmp_path / "files"
    for shard in range(2):
        sub = d / f"{shard:05d}"
        sub.mkdir(parents=True)
        for i in range(3):
            key = f"{shard:05d}{i:04d}"
            (sub / f"{key}.jpg").write_bytes(image_bytes(seed=i))
            (sub / f"{key}.txt").write_text(f"cap {key}")
        (d / f"{shard:05d}.parquet").write_bytes(b"meta")
    src = open_source(str(d))
    assert src.kind == "img2dataset-files"
    assert [len(s.files) for s in src.shards()] == [3, 3]


def test_captions_only_folder(tmp_path: Path):
    d = tmp_path / "sam_llava"
    d.mkdir()
    for i in range(3):
        (d / f"sa_{i}.txt").write_text(f"The image shows {i} dogs.")
    src = open_source(str(d))
    assert src.kind == "captions" and not src.has_images
    assert [s.caption for s in src.iter_samples()] == [f"The image shows {i} dogs." for i in range(3)]


def test_real_sam_photos_folder():
    d = shared("sam")
    src = open_source(str(d))
    samples = [s for s in src.iter_samples() if isinstance(s, Sample)]
    assert len(samples) == 5


# ---------------------------------------------------------------- detection errors
def test_missing_path_fails_at_once(tmp_path: Path):
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "nope"))


def test_unrecognisable_folder_lists_layouts(tmp_path: Path):
    (tmp_path / "x.md").write_text("hi")
    with pytest.raises(SourceError) as e:
        open_source(str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "SA-1B tars" in msg and "webdataset" in msg


def test_unknown_kind_names_accepted():
    with pytest.raises(ConfigError) as e:
        open_source(".", kind="coco")
    assert "--kind" in str(e.value) and "'webdataset'" in str(e.value)


def test_memory_filesystem(tmp_path: Path):
    import fsspec

    local = write_tar(tmp_path / "00000.tar", wds_sample("k1", "in memory", 1))
    fs = fsspec.filesystem("memory")
    fs.pipe("/recaption-test/wds/00000.tar", local.read_bytes())
    try:
        src = open_source("memory://recaption-test/wds")
        (s,) = list(src.iter_samples())
        assert s.caption == "in memory" and s.ref is not None and s.ref.uri.startswith("memory://")
        assert ImageOpener().read(s.ref) == s.data
    finally:
        fs.rm("/recaption-test", recursive=True)


def test_ref_that_no_longer_opens(tmp_path: Path):
    from recaption.readers import RefError

    with pytest.raises(RefError, match="no longer exists"):
        ImageOpener().read(ImageRef(uri=str(tmp_path / "gone.jpg")))
    p = write_tar(tmp_path / "a.tar", wds_sample("k", "c", 1))
    ref = next(iter(open_source(str(p)).iter_samples())).ref
    shutil.copy(p, tmp_path / "b.tar")
    p.write_bytes(p.read_bytes()[:600])
    with pytest.raises(RefError):
        ImageOpener().read(ref)


@pytest.fixture
def decompressions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URIs of the compressed tars ImageOpener decompresses, one entry per decompression."""
    from recaption.readers import refs

    made: list[str] = []
    real = refs._LocalTar

    def counting(uri: str) -> refs._LocalTar:
        made.append(uri)
        return real(uri)

    monkeypatch.setattr(refs, "_LocalTar", counting)
    return made


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar.xz"])
def test_compressed_tar_is_decompressed_once_for_all_its_images(
    tmp_path: Path, decompressions: list[str], suffix: str
):
    """Members of a compressed tar have no byte range: reopening 30 of them must not decompress
    the shard 30 times (quadratic in the shard size), and the temporary copy goes at close."""
    members = []
    for i in range(30):
        members += wds_sample(f"{i:05d}", f"caption {i}", seed=i)
    write_tar(tmp_path / "wds" / f"00000{suffix}", members)
    samples = [s for s in open_source(str(tmp_path / "wds")).iter_samples() if isinstance(s, Sample)]
    assert len(samples) == 30 and all(s.ref is not None and s.ref.offset == -1 for s in samples)
    opener = ImageOpener()
    assert [opener.read(s.ref) for s in reversed(samples)] == [s.data for s in reversed(samples)]  # type: ignore[arg-type]
    assert len(decompressions) == 1
    local = next(iter(opener._tars.values()))
    with pytest.raises(RefError, match="not found"):
        opener.read(ImageRef(uri=samples[0].ref.uri, member="nope.jpg"))  # type: ignore[union-attr]
    opener.close()
    assert local._file.closed
    # one image alone streams to its member (ImageRef.read), without a temporary copy
    assert samples[7].ref.read() == samples[7].data  # type: ignore[union-attr]
    assert len(decompressions) == 1


def test_a_damaged_tar_gz_keeps_the_members_before_the_damage(tmp_path: Path, decompressions: list[str]):
    """The reader captions the images before the point where a .tar.gz is cut; encode must reopen
    those, and say why the rest cannot be, without decompressing the archive again per image."""
    members = []
    for i in range(20):
        members += wds_sample(
            f"{i:05d}", f"caption {i}", img=image_bytes(64, 64, seed=i, fmt="PNG"), ext="png"
        )
    path = write_tar(tmp_path / "wds" / "00000.tar.gz", members)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 3 // 4])
    samples = [s for s in open_source(str(tmp_path / "wds")).iter_samples() if isinstance(s, Sample)]
    assert 0 < len(samples) < 20
    opener = ImageOpener()
    assert [opener.read(s.ref) for s in samples] == [s.data for s in samples]  # type: ignore[arg-type]
    with pytest.raises(RefError, match="past where the archive is damaged"):
        opener.read(ImageRef(uri=str(path), member="00019.png"))
    assert len(decompressions) == 1
    opener.close()
