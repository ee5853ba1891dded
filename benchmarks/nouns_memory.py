"""Peak memory of ``recaption nouns`` on a big captions table: bounded shards against the whole file.

    PYTHONPATH=. python benchmarks/nouns_memory.py [--rows 20000,200000] [--keep DIR]

Builds LAION-like captions tables (the ``TEXT`` and ``URL`` columns of the shared
``laion/img2dataset_test_1000.parquet`` repeated (no new words: spaCy's string store does not
grow with the table), written as one row group, as a plain ``pyarrow.parquet.write_table`` does)
of each size, and runs ``recaption nouns TABLE OUT --executor local`` on it in a subprocess, twice per size:

- baseline: ``--shard-size`` = the whole table, one shard (the layout before bounded shards: the
  whole file's rows and nouns held by one worker at once);
- default: the default shard size (10,000 rows).

Peak RSS is the child's ``ru_maxrss`` (``resource.getrusage(RUSAGE_CHILDREN)`` read in a fresh
wrapper process per run, so one run's peak never hides another's). The figure that matters is the
growth from the smallest to the largest table in each mode. Needs spaCy's ``en_core_web_sm``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, table

LAION = SHARED_DATA / "laion" / "img2dataset_test_1000.parquet"
WRAPPER = (
    "import resource, subprocess, sys; "
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def make_table(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = pq.read_table(LAION, columns=["URL", "TEXT"]).to_pydict()
    n = len(base["TEXT"])
    texts = [base["TEXT"][i % n] or "" for i in range(rows)]
    urls = [base["URL"][i % n] for i in range(rows)]
    pq.write_table(pa.table({"URL": urls, "TEXT": texts}), path, row_group_size=rows)


def peak_rss(args: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one ``recaption`` run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "recaption", *args]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    seconds = time.perf_counter() - t0
    rc, kb = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"recaption {' '.join(args)} exited {rc}:\n{out.stderr[-2000:]}")
    return int(kb) / 1024, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="20000,200000", help="table sizes, comma-separated")
    ap.add_argument("--keep", default=None, help="build tables and outputs here (default: a temp folder)")
    a = ap.parse_args()
    if not LAION.exists():
        raise SystemExit(f"needs the shared LAION parquet: {LAION}")
    sizes = [int(x) for x in a.rows.split(",")]
    work = Path(a.keep or tempfile.mkdtemp(prefix="nouns-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, peaks = [], {}
    for n in sizes:
        path = work / f"laion_{n}.parquet"
        make_table(path, n)
        for mode, extra in (("whole file (baseline)", ["--shard-size", str(n)]), ("default shards", [])):
            out = work / f"out_{n}_{'whole' if extra else 'default'}"
            mb, s = peak_rss(["nouns", str(path), str(out), "--executor", "local", *extra])
            peaks[(mode, n)] = mb
            rows.append([f"{n:,}", mode, f"{mb:.0f}", f"{s:.1f}"])
            print(rows[-1], flush=True)
    print()
    print(table(rows, ["rows", "layout", "peak RSS (MB)", "wall (s)"]))
    lo, hi = sizes[0], sizes[-1]
    if lo != hi:
        for mode in ("whole file (baseline)", "default shards"):
            print(
                f"{mode}: {hi:,} rows peak / {lo:,} rows peak = {peaks[(mode, hi)] / peaks[(mode, lo)]:.2f}"
            )
        print(
            f"at {hi:,} rows: default shards / whole file = "
            f"{peaks[('default shards', hi)] / peaks[('whole file (baseline)', hi)]:.2f}"
        )


if __name__ == "__main__":
    main()
