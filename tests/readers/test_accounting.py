"""Every file of a folder or tar source is a sample, a sidecar, or listed with the reason it was not
read: odd extensions, formats Pillow cannot decode, links in folders and in tars."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recaption.cli import app
from recaption.readers import Failure, ImageOpener, Sample, open_source
from tests.builders import image_bytes, sam_json, wds_sample, write_tar

runner = CliRunner()


def _split(items: list) -> tuple[list[Sample], list[Failure]]:
    return [s for s in items if isinstance(s, Sample)], [f for f in items if isinstance(f, Failure)]


def _inspect(path: Path, *extra: str) -> dict:
    r = runner.invoke(app, ["inspect", str(path), "--json", *extra])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


ODD = {
    "upper.JPG": "JPEG",
    "jfif.jfif": "JPEG",
    "jpe.jpe": "JPEG",
    "tif.tif": "TIFF",
    "tiff.TIFF": "TIFF",
    "bmp.bmp": "BMP",
    "webp.webp": "WEBP",
    "gif.gif": "GIF",
}


def test_whatever_pillow_decodes_is_read_whatever_the_extension(tmp_path: Path):
    d = tmp_path / "photos"
    d.mkdir()
    for i, (name, fmt) in enumerate(ODD.items()):
        (d / name).write_bytes(image_bytes(40, 30, fmt=fmt, seed=i))
    (d / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    (d / "notes.md").write_text("not an image")
    (d / "upper.TXT").write_text("a caption whose extension shouts")  # a sidecar all the same
    report = _inspect(d)
    assert report["samples_ok"] == len(ODD)
    assert report["captions"]["with_caption"] == 1
    assert set(report["images"]["formats"]) == {"JPEG", "TIFF", "BMP", "WEBP", "GIF"}
    by_uri = {Path(f["uri"]).name: f for f in report["failures"]}
    assert set(by_uri) == {"phone.heic", "notes.md"}
    assert by_uri["phone.heic"]["severity"] == "error"
    assert "unsupported image format .heic" in by_uri["phone.heic"]["reason"]
    assert by_uri["notes.md"]["severity"] == "warning" and "not read" in by_uri["notes.md"]["reason"]


def test_a_folder_of_heic_alone_is_a_source_whose_every_file_says_why(tmp_path: Path):
    d = tmp_path / "phone"
    d.mkdir()
    for i in range(3):
        (d / f"IMG_{i}.HEIC").write_bytes(b"\x00" * 32)
    samples, failures = _split(list(open_source(str(d)).iter_samples()))
    assert not samples
    assert [f.key for f in failures] == ["IMG_0", "IMG_1", "IMG_2"]
    assert all("unsupported image format .heic" in f.reason for f in failures)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_symlinked_files_are_read_and_symlinked_folders_listed(tmp_path: Path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "x.jpg").write_bytes(image_bytes(seed=1))
    d = tmp_path / "photos"
    d.mkdir()
    (d / "a.jpg").write_bytes(image_bytes(seed=2))
    os.symlink(real / "x.jpg", d / "linked.jpg")  # a file link: read through it
    os.symlink(real, d / "more")  # a folder link: not followed, listed
    os.symlink(d, d / "loop")  # would loop forever if followed
    os.symlink(tmp_path / "gone.jpg", d / "broken.jpg")
    samples, failures = _split(list(open_source(str(d)).iter_samples()))
    assert sorted(s.key for s in samples) == ["a", "linked"]
    assert samples[[s.key for s in samples].index("linked")].image_bytes() == (real / "x.jpg").read_bytes()
    reasons = {Path(f.uri).name: (f.severity, f.reason) for f in failures}
    assert set(reasons) == {"more", "loop", "broken.jpg"}
    assert reasons["more"][0] == "warning" and "directory symlink 'more'" in reasons["more"][1]
    assert reasons["broken.jpg"][0] == "error" and "broken symbolic link" in reasons["broken.jpg"][1]


def _tar_with_links(
    path: Path, members: list[tuple[str, bytes]], links: list[tuple[str, str, bytes]]
) -> None:
    """A tar of regular members, then (name, target, type) link members after them."""
    mode = "w:gz" if path.suffix == ".gz" else "w"
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target, kind in links:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tf.addfile(info)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_sam_tar_hard_links_are_samples_and_other_links_failures(tmp_path: Path, suffix: str):
    jpg = image_bytes(96, 64, seed=3)
    path = tmp_path / f"sa_000000{suffix}"
    _tar_with_links(
        path,
        [("sa_1.jpg", jpg), ("sa_1.json", sam_json(1, 96, 64))],
        [
            ("sa_2.jpg", "sa_1.jpg", tarfile.LNKTYPE),
            ("sa_3.jpg", "sa_1.jpg", tarfile.SYMTYPE),
            ("sa_4.jpg", "", tarfile.FIFOTYPE),
            ("sa_5.jpg", "sa_9.jpg", tarfile.LNKTYPE),
        ],
    )
    src = open_source(str(path))
    assert src.kind == "sam"
    samples, failures = _split(list(src.iter_samples()))
    assert [s.key for s in samples] == ["sa_1", "sa_2"]
    linked = samples[1]
    assert linked.image_bytes() == jpg
    assert ImageOpener().read(linked.ref) == jpg  # a later stage reopens it from its reference
    by_member = {f.member: f.reason for f in failures}
    assert "symbolic link to 'sa_1.jpg'" in by_member["sa_3.jpg"]
    assert "named pipe" in by_member["sa_4.jpg"]
    assert "hard link to 'sa_9.jpg'" in by_member["sa_5.jpg"]
    report = _inspect(path)  # inspect lists them too
    assert report["samples_ok"] == 2 and report["errors"] == 3


def test_webdataset_link_members(tmp_path: Path):
    members = wds_sample("000000000", "a cat", seed=0)
    path = tmp_path / "wds" / "00000.tar"
    path.parent.mkdir()
    _tar_with_links(
        path,
        members,
        [
            ("000000001.jpg", "000000000.jpg", tarfile.LNKTYPE),
            ("000000002.jpg", "000000000.jpg", tarfile.SYMTYPE),
        ],
    )
    samples, failures = _split(list(open_source(str(path.parent)).iter_samples()))
    assert [s.key for s in samples] == ["000000000", "000000001"]
    assert samples[1].image_bytes() == dict(members)["000000000.jpg"]
    (f,) = failures
    assert f.member == "000000002.jpg" and "symbolic link" in f.reason
    assert f.key == "000000002"  # the failure manifest's row is keyed like a sample (it was "")


def test_webdataset_member_pillow_cannot_decode_says_so(tmp_path: Path):
    write_tar(tmp_path / "wds" / "00000.tar", [("a.heic", b"\x00" * 16), ("a.txt", b"a photo")])
    _, failures = _split(list(open_source(str(tmp_path / "wds")).iter_samples()))
    (f,) = [f for f in failures if f.severity == "error"]
    assert "unsupported image format .heic" in f.reason and f.key == "a"


def test_a_named_pipe_in_a_folder_is_listed_not_opened(tmp_path: Path):
    # opening a FIFO blocks until a writer comes: inspect hung forever (and ignored SIGTERM)
    d = tmp_path / "photos"
    d.mkdir()
    (d / "a.jpg").write_bytes(image_bytes(seed=1))
    os.mkfifo(d / "pipe.jpg")
    os.mkfifo(d / "notes")
    os.symlink(d / "pipe.jpg", d / "to_pipe.jpg")
    samples, failures = _split(list(open_source(str(d)).iter_samples()))
    assert [s.key for s in samples] == ["a"]
    reasons = {Path(f.uri).name: (f.severity, f.reason) for f in failures}
    assert set(reasons) == {"pipe.jpg", "notes", "to_pipe.jpg"}
    assert reasons["pipe.jpg"] == ("error", "a named pipe, not a regular file; not read")
    assert reasons["notes"][0] == "warning"


def test_a_file_named_only_by_its_extension_keeps_a_key(tmp_path: Path):
    # ".jpg" and "sub/.png" were samples keyed "" and "sub/", and .DS_Store's failure row had key ""
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    for name in (".jpg", "sub/.png", "ok.jpg"):
        (d / name).write_bytes(image_bytes(seed=1))
    (d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    samples, failures = _split(list(open_source(str(d)).iter_samples()))
    assert sorted(s.key for s in samples) == [".jpg", "ok", "sub/.png"]
    (f,) = failures
    assert f.key == ".DS_Store" and f.severity == "warning"


def test_other_files_beside_tar_shards_and_sa1b_files_are_listed(tmp_path: Path):
    # a stray image, a README, .DS_Store, a broken link or a FIFO beside the tars (or in an extracted
    # SA-1B folder) vanished without a word: only the tars (the sa_<id> files) were looked at
    wds = tmp_path / "wds"
    write_tar(wds / "00000.tar", wds_sample("000000000", "a cat", seed=0))
    (wds / "00000.parquet").write_bytes(b"img2dataset metadata")  # expected beside the tar
    (wds / "00000_stats.json").write_text("{}")
    (wds / "stray.jpg").write_bytes(image_bytes(seed=1))
    (wds / "README").write_text("hi")
    os.symlink(tmp_path / "gone.tar", wds / "00001.tar")
    sam = tmp_path / "sam"
    sam.mkdir()
    (sam / "sa_1.jpg").write_bytes(image_bytes(seed=2))
    (sam / "sa_1.json").write_bytes(sam_json(1, 64, 48))
    (sam / ".DS_Store").write_bytes(b"\0")
    os.mkfifo(sam / "sa_2.jpg")
    for d, kind, samples_want, listed in (
        (wds, "webdataset", ["000000000"], {"stray.jpg", "README", "00001.tar"}),
        (sam, "sam", ["sa_1"], {".DS_Store", "sa_2.jpg"}),
    ):
        source = open_source(str(d))
        assert source.kind == kind
        samples, failures = _split(list(source.iter_samples()))
        assert [s.key for s in samples] == samples_want
        assert {Path(f.uri).name for f in failures} == listed, failures
        assert all(f.key and "not read" in f.reason for f in failures)
