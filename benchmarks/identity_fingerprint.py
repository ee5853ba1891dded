"""What the input identity costs on local disk: a ``stat`` per file (a rerun's check) against the
same plus the content fingerprint recorded at commit (:func:`recaption.shards.identity.fingerprint`,
an eighth of the file, 4-64 KiB, at each end), for a 1 GiB tar shard and a 10,000-file folder
chunk, with reading the same bytes whole (what the stage's reader does next) as the baseline, in the
same run.

    PYTHONPATH=. .venv/bin/python benchmarks/identity_fingerprint.py [--tar-mib 1024]
        [--files 10000] [--file-kib 100]

Files are written to a temporary folder and read once before timing, so every figure is with the
page cache warm (dropping it needs root and would slow the machine's other users); cold, the
fingerprint's reads are those the reader then finds cached. One core (pinned), median of 3.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, pin_one_core, table


def _read_all(paths: list[str]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tar-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--file-kib", type=int, default=100)
    args = ap.parse_args()
    pin_one_core()
    from recaption.shards.identity import identities

    tmp = Path(tempfile.mkdtemp(prefix="identity-bench-"))
    try:
        block = os.urandom(1 << 20)
        tar = tmp / "00000.tar"
        with open(tar, "wb") as f:
            for i in range(args.tar_mib):
                f.write(i.to_bytes(8, "little") + block[8:])
        chunk = tmp / "chunk"
        chunk.mkdir()
        size = args.file_kib * 1024
        files = []
        for i in range(args.files):
            p = chunk / f"{i:06d}.jpg"
            start = (i * 4099) % (len(block) - size) if size < len(block) else 0
            p.write_bytes(i.to_bytes(8, "little") + block[start : start + size - 8])
            files.append(str(p))
        rows = []
        for label, paths, nbytes in (
            (f"tar shard, {args.tar_mib} MiB", [str(tar)], args.tar_mib << 20),
            (f"folder chunk, {args.files} × {args.file_kib} KiB", files, args.files * size),
        ):
            _read_all(paths)  # warm the page cache
            stat_s = best_of(lambda paths=paths: identities(paths))
            fp_s = best_of(lambda paths=paths: identities(paths, fingerprints=True))
            read_s = best_of(lambda paths=paths: _read_all(paths))
            rows.append(
                [
                    label,
                    f"{stat_s * 1e3:.1f}",
                    f"{fp_s * 1e3:.1f}",
                    f"{(fp_s - stat_s) * 1e3:.1f}",
                    f"{read_s * 1e3:.1f}",
                    f"{(fp_s - stat_s) / read_s:.3f}",
                    f"{nbytes / 2**20:.0f}",
                ]
            )
        print(
            table(
                rows,
                [
                    "input",
                    "stat only ms (rerun)",
                    "stat + fingerprint ms (commit)",
                    "fingerprint ms",
                    "read whole ms (baseline)",
                    "fingerprint / read",
                    "MiB",
                ],
            )
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
