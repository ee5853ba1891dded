"""``recaption export-captions``: .txt sidecars beside images (kohya sd-scripts, OneTrainer,
SimpleTuner) and an imagefolder metadata.jsonl that Hugging Face ``datasets`` loads."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from recaption.cli import app
from tests.builders import image_bytes, truncated_jpeg


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory: pytest.TempPathFactory, tiny_llava_dir: str) -> tuple[Path, Path]:
    """Captions of a folder whose images share a name: ``a/1.jpg``, ``b/1.jpg``, ``c/1.png``, and
    ``d/2.jpg`` (truncated: captioning fails). Raw captions from .txt sidecars."""
    root = tmp_path_factory.mktemp("export")
    src = root / "images"
    files = {
        "a/1.jpg": image_bytes(64, 48, seed=1),
        "b/1.jpg": image_bytes(48, 64, seed=2),
        "c/1.png": image_bytes(40, 40, seed=3, fmt="PNG"),
        "d/2.jpg": truncated_jpeg(),
    }
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
        (src / rel).with_suffix(".txt").write_text(f"raw caption of {rel}")
    out = root / "captions"
    r = invoke(
        "caption", str(src), str(out), "--model", tiny_llava_dir, "--device", "cpu",
        "--max-new-tokens", "4", "--executor", "local",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return src, out


def test_txt_sidecars_beside_copied_images(caption_run: tuple[Path, Path], tmp_path: Path):
    src, out = caption_run
    dest = tmp_path / "kohya"
    r = invoke("export-captions", str(out), str(dest), "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["written"] == 3
    assert s["renamed"] == 0  # three images named 1.*, each in its own folder as in the source
    assert s["skipped"] == {"no caption (captioning failed)": 1}
    names = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert names == ["a/1.jpg", "a/1.txt", "b/1.jpg", "b/1.txt", "c/1.png", "c/1.txt"]
    # every caption file has its image beside it, as kohya / OneTrainer / SimpleTuner pair them
    captions = pd.read_parquet(out)
    ok = captions[captions["error"].isna()].sort_values("key")
    by_bytes = {(src / p).read_bytes(): p for p in ("a/1.jpg", "b/1.jpg", "c/1.png")}
    for txt in dest.rglob("*.txt"):
        image = next(p for p in txt.parent.iterdir() if p.stem == txt.stem and p.suffix != ".txt")
        original = by_bytes[image.read_bytes()]  # the bytes, unchanged
        row = ok[ok["image_uri"].str.endswith(original)].iloc[0]
        assert txt.read_text() == row["dense_caption"].strip() + "\n"


def test_raw_captions_and_captions_only(caption_run: tuple[Path, Path], tmp_path: Path):
    _, out = caption_run
    dest = tmp_path / "raw"
    r = invoke(
        "export-captions",
        str(out),
        str(dest),
        "--caption",
        "raw",
        "--images",
        "none",
        "--caption-ext",
        ".caption",
    )
    assert r.exit_code == 0, r.output
    written = [p for p in dest.rglob("*") if p.is_file() and p.name != "_lease.json"]
    texts = sorted(p.read_text() for p in written)
    assert sorted(p.relative_to(dest).as_posix() for p in written) == [
        "a/1.caption",
        "b/1.caption",
        "c/1.caption",
    ]
    assert texts == [f"raw caption of {rel}\n" for rel in ("a/1.jpg", "b/1.jpg", "c/1.png")]


def test_imagefolder_jsonl_loads_in_datasets(caption_run: tuple[Path, Path], tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    _, out = caption_run
    dest = tmp_path / "hf"
    r = invoke("export-captions", str(out), str(dest), "--format", "jsonl")
    assert r.exit_code == 0, r.output
    meta = [json.loads(line) for line in (dest / "metadata.jsonl").read_text().splitlines()]
    assert sorted(m["file_name"] for m in meta) == ["a/1.jpg", "b/1.jpg", "c/1.png"]
    ds = datasets.load_dataset("imagefolder", data_dir=str(dest), split="train")
    assert len(ds) == 3
    captions = pd.read_parquet(out)
    assert sorted(ds["text"]) == sorted(captions["dense_caption"].dropna().str.strip())
    assert ds[0]["image"].size[0] > 0


def test_refuses_to_overwrite_and_names_bad_options(caption_run: tuple[Path, Path], tmp_path: Path):
    src, out = caption_run
    # DEST = the source folder: a/1.txt, its own raw caption, must not be replaced
    r = invoke("export-captions", str(out), str(src), "--images", "none")
    assert r.exit_code == 2
    assert "exists; refusing to overwrite" in r.output
    assert (src / "a" / "1.txt").read_text() == "raw caption of a/1.jpg"
    r = invoke("export-captions", str(out), str(tmp_path / "x"), "--caption", "dense_captoin")
    assert r.exit_code == 2
    assert "dense_captoin" in r.output and "raw" in r.output
    r = invoke("export-captions", str(out), str(tmp_path / "y"), "--format", "csv")
    assert r.exit_code == 2 and "txt" in r.output and "jsonl" in r.output
    r = invoke("export-captions", str(tmp_path), str(tmp_path / "z"))
    assert r.exit_code == 2 and "no caption shards here" in r.output


def test_names_and_folders_of_the_source_are_kept(tiny_llava_dir: str, tmp_path: Path):
    """A caption file must have its image's exact stem in its image's folder: kohya sd-scripts
    (``10_dog/`` repeat folders), OneTrainer and SimpleTuner pair ``a photo.JPG`` with
    ``a photo.txt``, and ``--images none`` is for dropping the captions beside the images in place.
    The export flattened every folder (``a/x.jpg``, ``b/x.jpg`` became ``x.jpg``, ``x-1.jpg``) and
    rewrote names (``a photo.JPG`` became ``a_photo.jpg``)."""
    datasets = pytest.importorskip("datasets")
    src = tmp_path / "images"
    rels = ["a photo.JPG", "10_dog/x.jpg", "20_cat/x.jpg", "sub dir/ünï/café.png"]
    for i, rel in enumerate(rels):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(image_bytes(40 + i, 32, seed=i, fmt="PNG" if rel.endswith("png") else "JPEG"))
    out = tmp_path / "captions"
    r = invoke(
        "caption", str(src), str(out), "--model", tiny_llava_dir, "--device", "cpu",
        "--max-new-tokens", "4", "--executor", "local",
    )  # fmt: skip
    assert r.exit_code == 0, r.output

    def files(root: Path) -> set[str]:
        return {
            p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "_lease.json"
        }

    stems = {rel.rsplit(".", 1)[0] for rel in rels}
    dest = tmp_path / "kohya"
    r = invoke("export-captions", str(out), str(dest), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["renamed"] == 0
    assert files(dest) == set(rels) | {s + ".txt" for s in stems}
    for rel in rels:
        assert (dest / rel).read_bytes() == (src / rel).read_bytes()

    # captions only, into the source folder itself: each beside its image
    r = invoke("export-captions", str(out), str(src), "--images", "none", "--caption-ext", ".caption")
    assert r.exit_code == 0, r.output
    assert files(src) == set(rels) | {s + ".caption" for s in stems}

    # imagefolder: file_name relative to metadata.jsonl, in the same folders
    hf = tmp_path / "hf"
    r = invoke("export-captions", str(out), str(hf), "--format", "jsonl")
    assert r.exit_code == 0, r.output
    meta = [json.loads(line) for line in (hf / "metadata.jsonl").read_text().splitlines()]
    assert sorted(m["file_name"] for m in meta) == sorted(rels)
    ds = datasets.load_dataset("imagefolder", data_dir=str(hf), split="train", cache_dir=str(tmp_path / "c"))
    assert len(ds) == len(rels)
