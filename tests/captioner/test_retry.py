"""``--retry-flagged N``: captions cut at the length limit or flagged as loops are regenerated with
seeded sampling, up to N times; the first clean one is kept (or the last), on the record."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from recaption.captioner.model import Captioner, CaptionerConfig, CaptionResult
from recaption.captioner.stage import CaptionStage
from recaption.errors import ConfigError
from recaption.readers import open_source
from recaption.runner import run_local
from tests.builders import sam_member_pairs, write_tar


def cfg(model: str, **kw) -> CaptionerConfig:
    kw.setdefault("max_new_tokens", 4)  # random weights never stop in 4 tokens: every caption is flagged
    kw.setdefault("batch_size", 4)
    kw.setdefault("device", "cpu")
    return CaptionerConfig(model=model, **kw)


@pytest.fixture
def sam_tars(tmp_path: Path) -> Path:
    d = tmp_path / "sa1b"
    write_tar(d / "sa_000000.tar", sam_member_pairs(1, 3))
    write_tar(d / "sa_000001.tar", sam_member_pairs(4, 3))
    return d


def parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}


def counters(out: Path) -> dict[str, int]:
    total: dict[str, int] = {}
    for p in out.glob("_stats/part-*.json"):
        for k, v in json.loads(p.read_text())["counters"].items():
            total[k] = total.get(k, 0) + v
    return total


def test_flagged_captions_are_retried_reproducibly_and_resume(
    tiny_llava_dir: str, sam_tars: Path, tmp_path: Path
):
    def stage(**kw) -> CaptionStage:
        return CaptionStage(
            source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir, **kw), retry_flagged=2
        )

    greedy = tmp_path / "greedy"
    run_local(
        CaptionStage(source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir)),
        str(greedy),
        progress=False,
    )
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_local(stage(), str(a), progress=False)
    run_local(stage(batch_size=1), str(b), progress=False)  # other batches: the same samples
    assert parts(a) == parts(b)
    df = pd.read_parquet(a).sort_values("key")
    g = pd.read_parquet(greedy).sort_values("key")
    assert (g["finish_reason"] == "length").all() and (g["attempts"] == 1).all()
    assert g["retry_reason"].isna().all()
    # every caption was flagged at the first try: retried twice (still flagged), the last one kept
    assert (df["attempts"] == 3).all()
    assert df["retry_reason"].str.startswith("length").all()
    assert (df["finish_reason"] == "length").all()
    assert df["dense_caption"].tolist() != g["dense_caption"].tolist()  # sampled, not the greedy one
    n = len(df)
    got = counters(a)
    assert got["retried"] == n and got["retry_still_flagged"] == n and "retry_fixed" not in got
    assert got["length_limited"] == n  # the kept captions' flags, counted once
    # resume: an interrupted shard is redone with the same retries
    run_local(stage(), str(c), progress=False)
    (c / "_stats" / "part-00001.json").unlink()
    (c / "part-00001.parquet").unlink()
    summary = run_local(stage(batch_size=2), str(c), progress=False)
    assert [s["shard"] for s in summary.done] == [1]
    assert parts(c) == parts(a)
    # a rerun with another retry count is another result: refused, not mixed
    from recaption.runner.base import OutputConflictError

    with pytest.raises(OutputConflictError, match="retry"):
        run_local(
            CaptionStage(source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir), retry_flagged=3),
            str(a),
            progress=False,
        )


class FakeSampler:
    """Stands in for the sampling captioner: clean at the attempt listed per key, flagged before."""

    def __init__(self, clean_at: dict[str, int]) -> None:
        self.clean_at = clean_at
        self.calls: list[list[str]] = []

    def caption(self, images, prompts, keys):
        self.calls.append(list(keys))
        out = []
        for k in keys:
            base, attempt = k.split("#retry")
            clean = int(attempt) >= self.clean_at.get(base, 99)
            out.append(
                CaptionResult(
                    text=f"{base} try {attempt}",
                    num_tokens=3,
                    finish_reason="stop" if clean else "length",
                    repetition=False,
                    repetition_score=0.0,
                    model_id="m",
                    revision="r",
                )
            )
        return out


def test_first_clean_retry_is_kept(
    tiny_llava_dir: str, sam_tars: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    keys = [f"sa_{i}" for i in range(1, 7)]
    fake = FakeSampler({keys[0]: 1, keys[1]: 2, keys[2]: 3})  # keys[3:] never clean
    monkeypatch.setattr(Captioner, "from_model", classmethod(lambda cls, *a, **kw: fake))
    stage = CaptionStage(source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir), retry_flagged=3)
    run_local(stage, str(tmp_path / "o"), progress=False)
    df = pd.read_parquet(tmp_path / "o").set_index("key").sort_index()
    assert df.loc[keys[0], ["dense_caption", "attempts", "finish_reason"]].tolist() == [
        f"{keys[0]} try 1",
        2,
        "stop",
    ]
    assert df.loc[keys[1], ["dense_caption", "attempts", "finish_reason"]].tolist() == [
        f"{keys[1]} try 2",
        3,
        "stop",
    ]
    assert df.loc[keys[2], ["dense_caption", "attempts", "finish_reason"]].tolist() == [
        f"{keys[2]} try 3",
        4,
        "stop",
    ]
    assert df.loc[keys[3], ["dense_caption", "attempts", "finish_reason"]].tolist() == [
        f"{keys[3]} try 3",
        4,
        "length",
    ]
    assert (df["retry_reason"].str.startswith("length")).all()
    # a clean caption is not retried again
    assert all(keys[0] not in k for call in fake.calls[1:] for k in call)
    got = counters(tmp_path / "o")
    assert got["retry_fixed"] == 3 and got["retry_still_flagged"] == 3
    assert got["length_limited"] == 3


def test_retry_options_are_validated(tiny_llava_dir: str, sam_tars: Path):
    with pytest.raises(ConfigError, match=r"retry_flagged.*integer >= 0"):
        CaptionStage(source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir), retry_flagged=-1)
    with pytest.raises(ConfigError, match="retry_temperature"):
        CaptionStage(
            source=open_source(str(sam_tars)), model=cfg(tiny_llava_dir), retry_flagged=1, retry_temperature=0
        )
