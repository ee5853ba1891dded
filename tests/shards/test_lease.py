"""One writer per output folder (issue 10.1): the lease."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from recaption.index import IndexStage
from recaption.readers import open_source
from recaption.runner import run_local
from recaption.shards.lease import LEASE_FILE, Lease, LeaseHeldError, LeaseInfo, OutputNotWritableError, hold

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}


def _foreign_lease(folder: Path, *, host: str, pid: int, age: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    info = LeaseInfo(id="other", host=host, pid=pid, started=now - age, heartbeat=now - age, command="index")
    (folder / LEASE_FILE).write_bytes(info.to_json())


def test_a_second_run_is_refused_at_once_and_the_first_completes_untouched(sam_tars: Path, tmp_path: Path):
    """Two processes on one folder: the second exits 2 naming the holder; the first's output is
    complete and byte-identical to an undisturbed run (today the second deleted the first's
    temporary files and the first failed)."""
    out, ref = tmp_path / "out", tmp_path / "ref"
    run_local(IndexStage(source=open_source(str(sam_tars))), str(ref), progress=False)
    first = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from recaption.readers import open_source; from recaption.runner import run_local;"
            "from tests.runner.stages import SlowIndexStage;"
            "s = run_local(SlowIndexStage(source=open_source(sys.argv[1]), seconds=0.6), sys.argv[2],"
            " progress=False);"
            "sys.exit(0 if s.ok else 1)",
            str(sam_tars),
            str(out),
        ],
        env=_env(),
        cwd=REPO,
    )
    try:
        deadline = time.time() + 60
        while not (out / "_progress").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert (out / LEASE_FILE).exists()
        t0 = time.time()
        _index_is_refused(sam_tars, out, first)
        assert time.time() - t0 < 60
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert parts == [f"part-{i:05d}.parquet" for i in range(4)]
    assert {n: (out / n).read_bytes() for n in parts} == {n: (ref / n).read_bytes() for n in parts}
    assert not (out / LEASE_FILE).exists()  # released at the end


def _index_is_refused(src: Path, out: Path, first: subprocess.Popen) -> None:
    """``recaption index src out`` while ``first`` holds a lease on it: exit 2 naming ``first``,
    which is still running."""
    second = subprocess.run(
        [sys.executable, "-m", "recaption", "index", str(src), str(out)],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert second.returncode == 2, second.stderr
    assert "being written by another run" in second.stderr
    assert f"pid {first.pid} on {socket.gethostname()}" in second.stderr
    assert first.poll() is None, "the first run must still be running when the second is refused"


def _slow_index(src: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from recaption.readers import open_source; from recaption.runner import run_local;"
            "from tests.runner.stages import SlowIndexStage;"
            "s = run_local(SlowIndexStage(source=open_source(sys.argv[1]), seconds=0.6), sys.argv[2],"
            " progress=False);"
            "print(s.failed); sys.exit(0 if s.ok else 1)",
            str(src),
            str(out),
        ],
        env=_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("second_inside", [False, True], ids=["around", "inside"])
def test_a_run_on_a_folder_around_or_inside_a_live_runs_is_refused(
    sam_tars: Path, tmp_path: Path, second_inside: bool
):
    """A run writing `out/inner` and a second on `out` (or the reverse): the second is refused,
    exit 2, naming the holder; the first completes. Before, a second run on `out` took its own
    lease, swept `out` recursively and deleted the first's temporary file in `out/inner`: the
    first failed with `FileNotFoundError ... .part-00000.parquet.tmp-…`."""
    first_out = tmp_path / "out" if second_inside else tmp_path / "out" / "inner"
    second_out = tmp_path / "out" / "inner" if second_inside else tmp_path / "out"
    first = _slow_index(sam_tars, first_out)
    try:
        deadline = time.time() + 60
        while not list(first_out.glob(".part-*.tmp-*")) and time.time() < deadline:
            time.sleep(0.02)
        _index_is_refused(sam_tars, second_out, first)
        stdout, _ = first.communicate(timeout=120)
        assert first.returncode == 0, stdout
    finally:
        if first.poll() is None:
            first.kill()
    assert sorted(p.name for p in first_out.glob("part-*.parquet")) == [
        f"part-{i:05d}.parquet" for i in range(4)
    ]
    assert not (second_out / "_stage.json").exists()  # refused before writing anything
    assert not (second_out / LEASE_FILE).exists()  # and its own lease given back


def test_a_rerun_with_other_settings_cannot_mix_into_a_live_run(tmp_path: Path, tiny_models: dict[str, str]):
    """Issue 10.1's story: `--set caption.max_new_tokens=6` started while a run with 24 writes the
    folder. It is refused before it records anything (today it rewrote pipeline.yaml and both
    runs wrote caption shards)."""
    import yaml

    from tests.pipeline.conftest import make_webdataset, tiny_config

    src = make_webdataset(tmp_path / "wds", n=4, per_shard=2)
    out = tmp_path / "run"
    cfg = tiny_config(src, out, tiny_models)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _foreign_lease(out, host=socket.gethostname(), pid=holder.pid, age=1.0)
        before = sorted(p.name for p in out.rglob("*"))
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "recaption",
                "run",
                str(tmp_path / "p.yaml"),
                "--set",
                "caption.max_new_tokens=6",
            ],
            env=_env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2, r.stderr
    assert f"pid {holder.pid}" in r.stderr
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing written: no pipeline.yaml


def test_a_lease_of_a_dead_process_is_taken_over_with_a_log_line(
    sam_tars: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _foreign_lease(out, host=socket.gethostname(), pid=dead.pid, age=1.0)
    with caplog.at_level("WARNING", logger="recaption"):
        summary = run_local(IndexStage(source=open_source(str(sam_tars))), str(out), progress=False)
    assert summary.ok and len(summary.done) == 4
    assert any("taking over a stale lease" in r.message and "is gone" in r.message for r in caplog.records)


def test_a_lease_from_another_pid_namespace_with_this_host_name_is_not_judged_by_its_pid(
    sam_tars: Path, tmp_path: Path
):
    """Containers sharing the host's network (docker --net=host, hostNetwork pods) share its name
    but not its pids: a live run's pid there is "gone" here. Before, its lease was taken over at
    once and its temporary files swept; it is live until its heartbeat times out."""
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    lease = {"id": "container", "host": socket.gethostname(), "pid": dead.pid, "started": now}
    lease |= {"heartbeat": now, "command": "run", "machine": "another-boot/pid:[4026532999]"}
    out.mkdir()
    (out / LEASE_FILE).write_text(json.dumps(lease))
    with pytest.raises(LeaseHeldError, match=f"pid {dead.pid}"):
        run_local(IndexStage(source=open_source(str(sam_tars))), str(out), progress=False)
    assert json.loads((out / LEASE_FILE).read_text())["id"] == "container"


def test_another_hosts_lease_is_live_until_its_heartbeat_times_out(sam_tars: Path, tmp_path: Path):
    out = tmp_path / "out"
    _foreign_lease(out, host="node-7", pid=4242, age=5.0)
    with pytest.raises(LeaseHeldError, match="pid 4242 on node-7"):
        run_local(IndexStage(source=open_source(str(sam_tars))), str(out), progress=False)
    assert not (out / "_stage.json").exists()  # refused before anything was written
    _foreign_lease(out, host="node-7", pid=4242, age=10_000.0)  # a lost node
    assert run_local(IndexStage(source=open_source(str(sam_tars))), str(out), progress=False).ok


def test_of_many_racing_takers_exactly_one_gets_the_lease(tmp_path: Path):
    results: list[str] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        lease = Lease(str(tmp_path / "out"))
        barrier.wait()
        try:
            lease.acquire()
            results.append("won")
        except LeaseHeldError:
            results.append("refused")

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["refused"] * 7 + ["won"]


def _eventually(condition: Callable[[], bool], within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_heartbeat_is_renewed_and_a_stolen_lease_is_noticed(tmp_path: Path):
    folder = tmp_path / "out"
    lease = Lease(str(folder), timeout=0.4)
    lease.acquire()
    try:
        first = json.loads((folder / LEASE_FILE).read_text())["heartbeat"]
        # Renewed every 0.1 s; polled up to a generous deadline so a loaded machine cannot fail it.
        assert _eventually(lambda: json.loads((folder / LEASE_FILE).read_text())["heartbeat"] > first)
        _foreign_lease(folder, host="node-2", pid=1, age=0.0)  # another run took it over
        assert _eventually(lambda: lease.lost)
        with pytest.raises(LeaseHeldError, match="lost its lease"):
            lease.check()
    finally:
        lease.release()
    assert (folder / LEASE_FILE).exists()  # the new holder's lease is not removed


def test_leases_are_reentrant_within_a_process(tmp_path: Path):
    with hold([str(tmp_path / "run"), str(tmp_path / "run" / "captions")]):
        with hold(str(tmp_path / "run" / "captions")):
            pass
        assert (tmp_path / "run" / "captions" / LEASE_FILE).exists()
    assert not (tmp_path / "run" / LEASE_FILE).exists()


def test_an_unwritable_output_is_one_line_exit_2_before_any_work(sam_tars: Path):
    r = subprocess.run(
        [sys.executable, "-m", "recaption", "index", str(sam_tars), "/sys/recaption-no-such-out"],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2
    assert "/sys/recaption-no-such-out: cannot write to this output folder" in r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(OutputNotWritableError):
        Lease("/sys/recaption-no-such-out").acquire()


@pytest.mark.parametrize("below", [False, True], ids=["is-a-file", "under-a-file"])
def test_an_output_that_is_a_file_is_one_line_exit_2(sam_tars: Path, tmp_path: Path, below: bool):
    """Before: a FileExistsError / NotADirectoryError traceback from makedirs."""
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    out = blocker / "out" if below else blocker
    r = subprocess.run(
        [sys.executable, "-m", "recaption", "index", str(sam_tars), str(out)],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert f"{out}: cannot write to this output folder ({blocker} is a file, not a folder)" in r.stderr
    assert "Traceback" not in r.stderr
    assert blocker.read_text() == "not a folder"
