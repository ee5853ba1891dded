"""``datasets.load_dataset(<stage folder>)`` gives that folder's rows as they are now: not another
run's folder of the same name, nor the shards a run had when the folder was first loaded.

``datasets`` caches a loaded folder under its name and a hash of its configuration; with
``.huggingface.yaml`` naming the files by a pattern, that hash was the same for every stage folder
of one name, so the second run's ``captions/`` loaded as the first one's rows (cached), and a
resumed run's new shards were never seen."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from recaption.index import IndexStage
from recaption.readers import open_source
from recaption.runner import run_local
from tests.builders import image_bytes


def _images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / f"{name}.jpg").write_bytes(image_bytes(32 + i, 24, seed=i))
    return folder


def _load(folder: Path, cache: Path) -> list[str]:
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(folder), split="train", cache_dir=str(cache))
    return sorted(ds["key"])


def test_two_runs_folders_of_one_name_load_their_own_rows(tmp_path: Path):
    cache = tmp_path / "hf-cache"
    a = _images(tmp_path / "a-src", ["a1", "a2"])
    b = _images(tmp_path / "b-src", ["b1", "b2", "b3"])
    run_local(IndexStage(source=open_source(str(a))), str(tmp_path / "run-a" / "captions"), progress=False)
    run_local(IndexStage(source=open_source(str(b))), str(tmp_path / "run-b" / "captions"), progress=False)
    assert _load(tmp_path / "run-a" / "captions", cache) == ["a1", "a2"]
    assert _load(tmp_path / "run-b" / "captions", cache) == ["b1", "b2", "b3"]


def test_a_resumed_run_loads_its_new_shards(tmp_path: Path):
    cache = tmp_path / "hf-cache"
    src = _images(tmp_path / "src", ["x1", "x2", "x3", "x4"])
    out = tmp_path / "run" / "captions"
    stage = IndexStage(source=open_source(str(src), shard_size=2))
    run_local(stage, str(out), progress=False)
    (out / "_stats" / "part-00001.json").unlink()  # as if the run had stopped after shard 0
    (out / "part-00001.parquet").unlink()
    assert _load(out, cache) == ["x1", "x2"]
    run_local(stage, str(out), progress=False)  # resumed: shard 1 is done now
    assert _load(out, cache) == sorted(pd.read_parquet(out)["key"]) == ["x1", "x2", "x3", "x4"]
