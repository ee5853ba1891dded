"""A small job end to end: `recaption caption` on the 5 shared SAM photos with the tiny LLaVA.

    .venv/bin/python benchmarks/small_job.py [--images DIR] [--repeats 2]

Wall time of the whole command, as a user types it (a fresh process: imports, model load, Ray or
not, captions, commit), with ``--executor auto`` (the default: one shard, so it runs in this
process) against the baseline in the same run: the same command with ``--executor ray`` (Ray
started inside the command, as every command did before ``auto``). Each is run ``--repeats`` times
into a fresh output folder, alternating, and the median is reported with the ratio.

CPU seconds (user + system of the command and of the processes it waited for) are given beside wall
time: on a shared machine they say what the job costs when others compete for the cores. Ray's own
daemons (raylet, GCS) are not waited for, so the Ray row's CPU figure leaves them out.
The tiny model is built once first (not timed), into a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import SHARED_DATA, table  # noqa: E402


def run(images: Path, model: str, out: Path, executor: str) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system of the command and the processes it waited for)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cmd = [
        sys.executable, "-m", "recaption", "caption", str(images), str(out),
        "--model", model, "--max-new-tokens", "16", "--device", "cpu", "--executor", executor, "--json",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if r.returncode != 0:
        raise SystemExit(f"{executor}: exit {r.returncode}\n{r.stderr[-2000:]}")
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--images", type=Path, default=SHARED_DATA / "sam")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise SystemExit(f"no images in {args.images}")
    from recaption.captioner.tiny import build_tiny_llava

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_llava(str(Path(tmp) / "llava"))
        times: dict[str, list[float]] = {"auto": [], "ray": []}
        cpus: dict[str, list[float]] = {"auto": [], "ray": []}
        for i in range(args.repeats):
            for executor in ("ray", "auto"):
                wall, cpu = run(args.images, model, Path(tmp) / f"out-{executor}-{i}", executor)
                times[executor].append(wall)
                cpus[executor].append(cpu)
                print(f"{executor}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    auto, ray = statistics.median(times["auto"]), statistics.median(times["ray"])
    cauto, cray = statistics.median(cpus["auto"]), statistics.median(cpus["ray"])
    print()
    print(f"`recaption caption` of {len(images)} images ({args.images}), tiny LLaVA, 16 tokens, CPU:")
    print(
        table(
            [
                [
                    "--executor auto (default: in this process)",
                    f"{auto:.1f}",
                    f"{cauto:.1f}",
                    f"{ray / auto:.1f}x",
                ],
                ["--executor ray (baseline: embedded Ray)", f"{ray:.1f}", f"{cray:.1f}", "1.0x"],
            ],
            ["command", "wall s (median)", "CPU s (median)", "wall speed-up"],
        )
    )


if __name__ == "__main__":
    main()
