"""``--executor auto``: a small job runs in this process; Ray where it pays (or is asked for)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recaption.errors import ConfigError
from recaption.runner.auto import choose_executor
from tests.runner.test_progress import BatchStage


@pytest.mark.parametrize(
    ("pending", "address", "workers", "expected"),
    [
        ([1], None, None, "local"),  # the 5 SAM photos: one shard
        ([0, 0], None, None, "local"),  # a rerun with nothing left
        ([1, 1, 1], None, None, "local"),  # a pipeline of one shard per stage
        ([3], None, 1, "local"),  # one worker asked for: nothing would run side by side
        ([3], None, None, "ray"),
        ([1, 4], None, None, "ray"),
        ([1], "ray://head:10001", None, "ray"),  # a cluster named: its nodes do the work
    ],
)
def test_choose_executor(pending, address, workers, expected, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    executor, why = choose_executor("auto", pending=pending, address=address, workers=workers)
    assert executor == expected, why
    assert ("--executor ray to force" in why) == (expected == "local")


def test_ray_address_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert choose_executor("auto", pending=[1])[0] == "ray"


def test_explicit_and_wrong_executors(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert choose_executor("ray", pending=[1])[0] == "ray"
    assert choose_executor("local", pending=[9])[0] == "local"
    with pytest.raises(ConfigError, match="--executor"):
        choose_executor("threads", pending=[1])


def test_run_stage_auto_does_not_start_ray_for_one_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from recaption import runner

    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def no_ray(*a, **k):
        raise AssertionError("Ray was started for a one-shard job")

    monkeypatch.setattr(runner, "run_ray", no_ray)
    summary = runner.run_stage(BatchStage(n_shards=1), str(tmp_path / "out"), executor="auto", progress=False)
    assert summary.rows == 6
    # two shards to do: Ray
    with pytest.raises(AssertionError, match="Ray was started"):
        runner.run_stage(BatchStage(n_shards=3), str(tmp_path / "out2"), executor="auto", progress=False)


def test_commands_default_to_auto():
    import typer.main

    from recaption.cli import app
    from recaption.pipeline.config import PipelineConfig

    cmd = typer.main.get_command(app)
    for name in ("caption", "nouns", "encode"):
        opt = next(p for p in cmd.commands[name].params if p.name == "executor")  # type: ignore[attr-defined]
        assert opt.default == "auto", name
    assert PipelineConfig.model_fields["executor"].default == "auto"
