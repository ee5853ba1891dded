"""`recaption run` with s3:// input and output, with both executors, against the same run on local
disk: the same bytes in every output file, the same nouns report and totals (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recaption import io
from tests.pipeline.conftest import make_webdataset, tiny_config
from tests.s3.server import S3

# Files whose content records a time, a host or a path: compared by their meaning, not bytes.
# (report/index.html shows the run's duration.)
# `.huggingface.yaml` names the finished shards' state (stats files' times): it differs by design.
VOLATILE = {"summary.json", "pipeline.yaml", "_stage.json", "_lease.json", "index.html", ".huggingface.yaml"}


def _tree(root: str) -> dict[str, bytes]:
    """Every file of a run folder, by path relative to it; the folder's own location, which
    reports record (``"source": ".../captions"``), is replaced by ``OUTPUT``."""
    out = {}
    for u in io.walk_files(root):
        rel = u[len(root) :].lstrip("/")
        data = io.read_bytes(u)
        out[rel] = data.replace(root.encode(), b"OUTPUT") if rel.startswith("report/") else data
    return out


def _stable(tree: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in tree.items() if io.basename(k) not in VOLATILE and "/_stats/" not in f"/{k}"}


def _stats_meaning(tree: dict[str, bytes]) -> dict[str, dict]:
    keep = ("rows", "errors", "warnings", "error_reasons", "warning_reasons", "files", "data_bytes")
    return {
        k: {f: v for f, v in json.loads(b).items() if f in keep}
        for k, b in tree.items()
        if "/_stats/" in f"/{k}"
    }


@pytest.fixture(scope="module")
def wds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_webdataset(tmp_path_factory.mktemp("s3-src") / "wds", n=8, per_shard=4)


def _run(source: str, output: str, models: dict[str, str], executor: str) -> None:
    from recaption.pipeline.config import load_config
    from recaption.pipeline.run import run_pipeline

    assert run_pipeline(
        load_config(tiny_config(source, output, models, executor=executor)), progress=False
    ).ok()


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_a_run_on_s3_equals_the_same_run_on_local_disk(
    s3: S3, wds: Path, tmp_path: Path, tiny_models: dict[str, str], executor: str
):
    import torch

    src = s3.put_dir(wds, "src")
    local_out = str(tmp_path / "run")
    threads = torch.get_num_threads()
    if executor == "ray":
        # On CPU the T5/VAE floats depend on torch's thread count (summation order); a Ray worker
        # of fewer than 2 CPUs runs 1 thread (OMP_NUM_THREADS=1), so the reference does too
        # (README: "Same bytes from either executor").
        torch.set_num_threads(1)
    try:
        _run(src, local_out, tiny_models, "local")  # the reference: same input, output on disk
    finally:
        torch.set_num_threads(threads)
    s3_out = s3.url("run")
    _run(src, s3_out, tiny_models, executor)
    ref, got = _tree(local_out), _tree(s3_out)
    assert sorted(_stable(got)) == sorted(_stable(ref))
    differ = [k for k in _stable(ref) if ref[k] != got[k]]
    assert not differ, differ
    assert _stats_meaning(got) == _stats_meaning(ref)
    summary = json.loads(got["summary.json"])
    assert summary["totals"] == json.loads(ref["summary.json"])["totals"]
    assert all(t["complete"] for t in summary["totals"].values())  # fresh listings, not stale ones
    assert summary["nouns_report"]  # the driver found the workers' _counts
    assert s3.uploads() == []
    assert not [k for k in got if "/_progress/" in f"/{k}" or io.is_tmp(k) or k.endswith("_lease.json")]


def test_every_stage_folder_opens_with_hf_datasets(tmp_path: Path, wds: Path, tiny_models: dict[str, str]):
    """Issue 12.1: `datasets.load_dataset(<stage folder>)` reads the data shards, not the failure
    manifests (which made it fail on empty `_failures/` files), also with failures present."""
    datasets = pytest.importorskip("datasets")
    import pandas as pd

    src = tmp_path / "src"
    src.mkdir()
    for t in sorted(wds.glob("*.tar")):
        (src / t.name).write_bytes(t.read_bytes())
    (src / "00002.tar").write_bytes((wds / "00000.tar").read_bytes()[:5000])  # failures, some rows
    out = tmp_path / "run"
    _run(str(src), str(out), tiny_models, "local")
    assert len(pd.read_parquet(out / "captions" / "_failures")) > 0
    for stage in ("captions", "nouns", "features"):
        folder = out / stage
        ds = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "hf-cache"))
        assert ds.num_rows == len(pd.read_parquet(folder)), stage
        assert "key" in ds.column_names and "reason" not in ds.column_names, stage
