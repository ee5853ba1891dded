"""``inspect`` and ``index`` of many small loose files: local disk against S3, one file at a time
against a window of concurrent reads, in the same run.

    PYTHONPATH=. python benchmarks/loose_files.py [--files 200,2000] [--repeats 1]

Writes N small JPEGs (64x48, ~2 KB, each with a ``.txt`` caption sidecar) to a temporary folder and
uploads them to a moto S3 server started here on 127.0.0.1 (``moto_server``; s3fs pointed at it
with ``AWS_ENDPOINT_URL_S3`` and dummy keys). For each N and each place it times, in this process:

- ``inspect``: ``inspect_source(open_source(URL))`` (lists, reads and decodes every image);
- ``index``: ``run_stage(IndexStage(open_source(URL)), OUT)`` on the local executor (OUT on disk);

once sequentially (``RECAPTION_READ_WINDOW=1``: one request after another, the baseline) and once
with the default read-ahead window (:data:`recaption.readers.fetch.DEFAULT_WINDOW` files in
flight). s3fs's listing cache is dropped before every run, so each run lists the folder too.
Needs ``pip install "moto[server]" s3fs``.

On loopback, moto's server spends ~5-9 ms of CPU per request (measured here: 1,000 GETs take 8.7 s
one by one, 7.7 s as one ``fs.cat`` batch, 5.4 s from 32 threads), which on a small machine caps
what any client-side concurrency gains there. A real object store's cost per request is mostly
waiting (20-50 ms round trips). A third place models that, labelled as a model: the local files
with a ``--latency-ms`` sleep before every read (``recaption.io.read_bytes``), for folders up to
``--latency-files`` files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table

BUCKET = "bench-loose"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(port: int) -> subprocess.Popen[bytes]:
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(exe).exists():
        raise SystemExit('needs moto\'s server: pip install "moto[server]" s3fs')
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start")


def make_files(folder: Path, n: int) -> None:
    import io

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
        (folder / f"{i:06d}.jpg").write_bytes(buf.getvalue())
        (folder / f"{i:06d}.txt").write_text(f"caption of image {i}")


def drop_listing_caches() -> None:
    import fsspec

    for cls in (fsspec.get_filesystem_class("s3"),):
        cls.clear_instance_cache()


def timed(what: str, url: str, out: Path, window: int, latency_s: float = 0.0) -> tuple[float, int]:
    """(seconds, samples) of one ``inspect`` or ``index`` of ``url`` with this read window."""
    from recaption import io
    from recaption.index import IndexStage
    from recaption.inspector import inspect_source
    from recaption.readers import open_source
    from recaption.runner import run_stage

    os.environ["RECAPTION_READ_WINDOW"] = str(window)
    drop_listing_caches()
    shutil.rmtree(out, ignore_errors=True)
    real_read = io.read_bytes
    if latency_s:

        def slow_read(*args: Any, **kw: Any) -> bytes:
            time.sleep(latency_s)  # a network round trip; the local disk does the rest
            return real_read(*args, **kw)

        io.read_bytes = slow_read  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        if what == "inspect":
            n = int(inspect_source(open_source(url))["samples_ok"])
        else:
            n = int(run_stage(IndexStage(source=open_source(url)), str(out)).rows)
        return time.perf_counter() - t0, n
    finally:
        io.read_bytes = real_read  # type: ignore[assignment]


def main() -> None:
    from recaption.readers.fetch import DEFAULT_WINDOW

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", default="200,2000", help="numbers of images, comma-separated")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many runs per figure")
    ap.add_argument("--latency-ms", type=float, default=25.0, help="simulated per-read latency (ms)")
    ap.add_argument("--latency-files", type=int, default=200, help="simulate it for folders up to this size")
    a = ap.parse_args()
    logging_quiet()
    port = free_port()
    os.environ.update(
        AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    work = Path(tempfile.mkdtemp(prefix="loose-files-"))
    server = start_moto(port)
    try:
        import s3fs

        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        rows = []
        for n in [int(x) for x in a.files.split(",")]:
            local = work / f"images_{n}"
            make_files(local, n)
            fs.put(str(local), f"{BUCKET}/images_{n}", recursive=True)
            for what in ("inspect", "index"):  # warm-up: imports and first-use costs off the figures
                timed(what, str(local), work / "out", 1)
            places = [("local disk", str(local), 0.0), ("S3 (moto)", f"s3://{BUCKET}/images_{n}", 0.0)]
            if n <= a.latency_files:
                places.append((f"disk + {a.latency_ms:g} ms/read (model)", str(local), a.latency_ms / 1000))
            for place, url, latency in places:
                for what in ("inspect", "index"):
                    got = {}
                    for window, label in ((1, "sequential"), (DEFAULT_WINDOW, "window")):
                        runs = [timed(what, url, work / "out", window, latency) for _ in range(a.repeats)]
                        seconds, count = min(runs)
                        if count != n:
                            raise SystemExit(f"{what} {url}: {count} samples, expected {n}")
                        got[label] = seconds
                    ratio = got["sequential"] / got["window"]
                    rows.append(
                        [
                            f"{n:,}",
                            place,
                            what,
                            f"{got['sequential']:.2f}",
                            f"{got['window']:.2f}",
                            f"{ratio:.1f}x",
                        ]
                    )
                    print(rows[-1], flush=True)
        print()
        header = ["files", "where", "command", "sequential (s)", f"window {DEFAULT_WINDOW} (s)", "speed-up"]
        print(table(rows, header))
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def logging_quiet() -> None:
    import logging

    logging.getLogger("recaption").setLevel(logging.WARNING)


if __name__ == "__main__":
    main()
