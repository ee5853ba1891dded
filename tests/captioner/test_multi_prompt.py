"""Several captions per image in one pass (``--prompt COLUMN=PROMPT`` repeated), and ``--prompt
auto`` on images without raw captions (issue 12, item 8)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from recaption.captioner.model import Captioner, CaptionerConfig
from recaption.captioner.stage import CaptionStage
from recaption.cli import app
from recaption.errors import ConfigError
from recaption.readers import open_source
from recaption.runner import run_local

SHORT = "Describe this image in one sentence."


def cfg(model: str, **kw) -> CaptionerConfig:
    kw.setdefault("max_new_tokens", 6)
    kw.setdefault("batch_size", 3)
    kw.setdefault("device", "cpu")
    return CaptionerConfig(model=model, **kw)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A folder of images of very different sizes, no raw captions (two shards)."""
    import numpy as np
    from PIL import Image

    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(2)
    for i, (h, w) in enumerate(((28, 28), (40, 400), (300, 50), (120, 90), (64, 64))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"img{i}.jpg")
    return d


def run(stage: CaptionStage, out: Path) -> pd.DataFrame:
    assert run_local(stage, str(out), progress=False).ok
    return pd.read_parquet(out).sort_values("key").reset_index(drop=True)


def test_two_prompts_in_one_pass_equal_two_single_prompt_runs(
    tiny_llava_dir: str, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    decodes: list[int] = []
    real_decode = Captioner.decode

    def counting_decode(self: Captioner, data: bytes):
        decodes.append(1)
        return real_decode(self, data)

    monkeypatch.setattr(Captioner, "decode", counting_decode)
    src = open_source(str(images), shard_size=3)
    both = run(
        CaptionStage(
            source=src, model=cfg(tiny_llava_dir), prompt=["dense_caption=sam", f"short_caption={SHORT}"]
        ),
        tmp_path / "both",
    )
    assert len(decodes) == 5  # each image read and decoded once for its two prompts
    decodes.clear()
    dense = run(CaptionStage(source=src, model=cfg(tiny_llava_dir), prompt="sam"), tmp_path / "dense")
    short = run(
        CaptionStage(source=src, model=cfg(tiny_llava_dir), prompt=f"short_caption={SHORT}"), tmp_path / "s"
    )
    assert len(decodes) == 10
    assert both["dense_caption"].tolist() == dense["dense_caption"].tolist()
    assert both["short_caption"].tolist() == short["short_caption"].tolist()
    assert both["dense_caption"].tolist() != both["short_caption"].tolist()
    # each caption has its own prompt, finish reason and flags
    assert set(both["prompt"]) == {"Describe this image and its style in a very detailed manner"}
    assert set(both["short_caption_prompt"]) == {SHORT}
    for col in ("finish_reason", "num_tokens", "repetition", "repetition_score", "error", "attempts"):
        assert both[f"short_caption_{col}"].tolist() == short[f"short_caption_{col}"].tolist(), col
        assert both[col].tolist() == dense[col].tolist(), col
    assert "dense_caption" not in short.columns  # a single column named otherwise is just that column


@pytest.mark.parametrize(
    ("prompt", "match"),
    [
        (["dense_caption=sam", "dense_caption=laion"], r"prompt.*dense_caption already taken"),
        (["raw_caption=sam"], r"prompt.*raw_caption already taken"),
        (["sam", "prompt=Describe it please"], r"prompt.*prompt already taken"),
        (["short=lion"], r"prompt.*'lion'"),
        (["short=Describe {subject}"], r"prompt.*subject"),
    ],
)
def test_bad_prompt_columns_fail_at_once(tiny_llava_dir: str, images: Path, prompt: list[str], match: str):
    with pytest.raises(ConfigError, match=match):
        CaptionStage(source=open_source(str(images)), model=cfg(tiny_llava_dir), prompt=prompt)


def test_caption_command_with_two_prompts_then_nouns_on_both(
    tiny_llava_dir: str, images: Path, tmp_path: Path
):
    out = tmp_path / "run"
    args = [
        "run",
        "--source",
        str(images),
        "--output",
        str(out),
        "--model",
        tiny_llava_dir,
        "--executor",
        "local",
    ]
    for k, v in {
        "caption.prompt": f"[dense_caption=sam, 'short_caption={SHORT}']",
        "caption.max_new_tokens": 6,
        "caption.device": "cpu",
        "nouns.columns": "[dense_caption, short_caption]",
        "encode.enabled": "false",
    }.items():
        args += ["--set", f"{k}={v}"]
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out / "captions")
    assert df["short_caption"].notna().all() and df["dense_caption"].notna().all()
    nouns = pd.read_parquet(out / "nouns").set_index("key").sort_index()
    df = df.set_index("key").sort_index()
    # the nouns stage counted each caption column (labels default to the column names)
    assert nouns["short_caption_caption"].tolist() == df["short_caption"].tolist()
    # a nouns column that no prompt writes fails before any captioning
    r = CliRunner().invoke(
        app, [*args[:-2], "--set", "nouns.columns=[long_caption]", "--output", str(tmp_path / "x")]
    )
    assert r.exit_code != 0 and "nouns.columns" in r.output and "short_caption" in r.output
    # the accepted values are the caption columns, not their metadata columns
    assert "'raw_caption', 'dense_caption', 'short_caption'" in r.output
    assert "short_caption_attempts" not in r.output, r.output


def test_caption_command_repeats_prompt(tiny_llava_dir: str, images: Path, tmp_path: Path):
    out = tmp_path / "c"
    r = CliRunner().invoke(
        app,
        [
            "caption",
            str(images),
            str(out),
            "--model",
            tiny_llava_dir,
            "--executor",
            "local",
            "--device",
            "cpu",
        ]
        + ["--max-new-tokens", "4", "--prompt", "dense_caption=sam", "--prompt", f"short_caption={SHORT}"],
    )
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out)
    assert df["short_caption"].notna().all() and set(df["short_caption_prompt"]) == {SHORT}


def test_auto_prompt_without_raw_captions_is_sam_with_one_message(
    tiny_llava_dir: str, images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """Issue 12 item 8: not the LAION prompt and a fallback warning per image."""
    from recaption.shards.manifest import read_failures

    with caplog.at_level(logging.INFO, logger="recaption"):
        stage = CaptionStage(source=open_source(str(images)), model=cfg(tiny_llava_dir), prompt="auto")
    assert stage.template.name == "sam"
    assert sum("--prompt auto uses the 'sam' prompt" in r.getMessage() for r in caplog.records) == 1
    df = run(stage, tmp_path / "out")
    assert not df["prompt_fallback"].any() and set(df["prompt_name"]) == {"sam"}
    assert read_failures(str(tmp_path / "out")).empty  # no warning per image


def test_auto_prompt_with_raw_captions_is_laion(tiny_llava_dir: str, images: Path):
    (images / "img3.txt").write_text("a red car by the sea")
    stage = CaptionStage(source=open_source(str(images)), model=cfg(tiny_llava_dir), prompt="auto")
    assert stage.template.name == "laion"


def test_each_caption_column_is_reported_and_its_reasons_group_by_what_happened(
    tiny_llava_dir: str, images: Path, tmp_path: Path
):
    """Another column's fallbacks, length cuts and failures reach the summary under its name, and
    its manifest reasons group by what happened, not by the column's name (was: "5 × s", and a
    summary that only described dense_caption)."""
    from recaption.quality import quality_lines

    src = open_source(str(images), shard_size=3)
    stage = CaptionStage(source=src, model=cfg(tiny_llava_dir, max_new_tokens=3), prompt=["sam", "s=laion"])
    res = run_local(stage, str(tmp_path / "c"), progress=False)
    assert res.ok
    # no raw captions: the 'laion' column fell back on all 5 images
    assert res.error_reasons("warning") == {"no raw caption under the prompt": 5}
    failures = pd.read_parquet(tmp_path / "c" / "_failures")
    assert all(r.endswith("(caption column s)") for r in failures["reason"])
    q = res.to_dict()["quality"]
    df = pd.read_parquet(tmp_path / "c")
    assert q["prompt_fallback"] == 0 and q["columns"]["s"]["prompt_fallback"] == 5
    assert q["columns"]["s"]["finish_reasons"] == {
        "stop": int((df["s_finish_reason"] == "stop").sum()),
        "length": int((df["s_finish_reason"] == "length").sum()),
        "error": 0,
    }
    lines = [line for line, _ in quality_lines("caption", q)]
    assert any(line.startswith("caption s: 5 samples") for line in lines), lines
    assert any("caption s:" in line and "5 prompt fallbacks" in line for line in lines), lines
    # a typo in encode --fields lists every caption column, also one not named *caption
    from recaption.encoder.stage import EncodeStage

    with pytest.raises(
        ConfigError, match=r"--fields.*the caption shards have: raw_caption, dense_caption, s$"
    ):
        EncodeStage(captions=str(tmp_path / "c"), fields=("dense", "ss"))


def test_nouns_command_refuses_a_column_the_caption_run_has_not_got(
    tiny_llava_dir: str, images: Path, tmp_path: Path
):
    """``recaption nouns RUN OUT --column shrt`` fails at once naming the run's caption columns (was:
    every shard failed with a missing-column error, then "invalid value for nouns output")."""
    caps = tmp_path / "c"
    run(
        CaptionStage(
            source=open_source(str(images)),
            model=cfg(tiny_llava_dir, max_new_tokens=2),
            prompt=["sam", f"short_caption={SHORT}"],
        ),
        caps,
    )
    args = ["nouns", str(caps), str(tmp_path / "n"), "--executor", "local"]
    r = CliRunner().invoke(app, [*args, "--column", "shrt"])
    assert r.exit_code != 0
    assert "--column" in r.output and "'shrt'" in r.output
    assert "raw_caption, dense_caption, short_caption" in r.output
    assert not (tmp_path / "n" / "_stats").exists()  # refused before any shard
    r = CliRunner().invoke(app, [*args, "--column", "short_caption"])
    assert r.exit_code == 0, r.output


def test_nouns_command_whose_shards_all_fail_says_why(
    tiny_llava_dir: str, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Every shard failing ends with the shards' failure, not "invalid value for nouns output"."""
    import recaption.shards.inputs as shard_inputs

    caps = tmp_path / "c"
    run(CaptionStage(source=open_source(str(images)), model=cfg(tiny_llava_dir, max_new_tokens=2)), caps)
    # a column the run's record lists but its shards lack (a hand-edited or damaged run)
    monkeypatch.setattr(shard_inputs, "caption_run_columns", lambda url: ["raw_caption", "gone"])
    r = CliRunner().invoke(
        app, ["nouns", str(caps), str(tmp_path / "n"), "--column", "gone", "--executor", "local"]
    )
    assert r.exit_code == 1
    assert "nouns output" not in r.output
    assert "missing column(s) 'gone'" in r.output, r.output


def test_a_run_without_dense_caption_reports_its_own_column(
    tiny_llava_dir: str, images: Path, tmp_path: Path
):
    """One ``--prompt x=...``: the summary describes column x (was: "0 captions finished, 0 cut"
    for a dense_caption the run never wrote)."""
    from recaption.quality import quality_lines

    stage = CaptionStage(
        source=open_source(str(images)), model=cfg(tiny_llava_dir, max_new_tokens=3), prompt="x=sam"
    )
    res = run_local(stage, str(tmp_path / "c"), progress=False)
    df = pd.read_parquet(tmp_path / "c")
    q = res.to_dict()["quality"]
    assert q["column"] == "x" and "columns" not in q
    assert q["finish_reasons"]["length"] == int((df["x_finish_reason"] == "length").sum())
    assert sum(q["finish_reasons"].values()) == len(df) == 5
    lines = [line for line, _ in quality_lines("caption", q)]
    assert lines[0].startswith("caption x: 5 samples"), lines


def test_report_of_a_run_whose_only_caption_column_is_not_dense(
    tiny_llava_dir: str, images: Path, tmp_path: Path
):
    """``recaption run`` with ``caption.prompt: x=sam`` writes its HTML report, on column x (was:
    "no HTML report: KeyError: 'error'", and ``recaption report`` a traceback)."""
    out = tmp_path / "run"
    args = ["run", "--source", str(images), "--output", str(out), "--model", tiny_llava_dir]
    args += ["--executor", "local"]
    for k, v in {
        "caption.prompt": "x=sam",
        "caption.max_new_tokens": 4,
        "caption.device": "cpu",
        "nouns.columns": "[raw_caption, x]",
        "encode.enabled": "false",
    }.items():
        args += ["--set", f"{k}={v}"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    page = (out / "report" / "index.html").read_text()
    assert "<th>x</th>" in page and "raw captions and x" in page
    captions = pd.read_parquet(out / "captions")
    assert any(str(c) in page for c in captions["x"] if c)  # the gallery shows column x's captions
    r = CliRunner().invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
