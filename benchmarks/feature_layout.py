"""Which parquet layout stores tensors fastest: write + read-back MB/s for 128 KiB tensors.

Layouts (one float16 tensor of 65,536 values per row, the size of a 1024-px SD-VAE latent's mean):

- ``binary``: raw little-endian bytes in a variable-size ``binary`` column (our choice);
- ``fixed_size_binary``: the same bytes in ``fixed_size_binary(131072)``;
- ``fixed_size_list<float16>``: ``fixed_size_list(float16, 65536)``;
- ``list<float16>``: ``list(float16)``;

each with compression none / lz4 / snappy / zstd, dictionary encoding and statistics off for the
tensor column (they only cost time on unique, incompressible blobs), plus ``binary`` with pyarrow's
defaults (dictionary and statistics on) to show what those cost. Read-back = ``pq.read_table``
then a numpy view of every tensor. Each cell is the best of ``--repeat`` runs, to a real file in a
temporary folder (page cache, so the numbers are CPU cost, not disk speed).

Run: ``PYTHONPATH=. python benchmarks/feature_layout.py [--rows 256] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

N_VALUES = 65536  # 128 KiB of float16


def make_array(layout: str, data: np.ndarray) -> pa.Array:
    rows = data.shape[0]
    raw = data.reshape(rows, -1)
    if layout.startswith("binary"):
        return pa.array([r.tobytes() for r in raw], type=pa.binary())
    if layout == "fixed_size_binary":
        return pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(raw.shape[1] * 2), rows, [None, pa.py_buffer(raw.tobytes())]
        )
    values = pa.array(raw.reshape(-1), type=pa.float16())
    if layout == "fixed_size_list<float16>":
        return pa.FixedSizeListArray.from_arrays(values, N_VALUES)
    if layout == "list<float16>":
        offsets = pa.array(np.arange(0, rows * N_VALUES + 1, N_VALUES, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, values)
    raise ValueError(layout)


def read_back(path: str, layout: str) -> int:
    """Read the file and view every tensor as numpy float16; returns the number of values seen."""
    col = pq.read_table(path).column("t")
    total = 0
    for chunk in col.chunks:
        if layout.startswith("binary"):
            offsets = np.frombuffer(
                chunk.buffers()[1], dtype=np.int32, count=len(chunk) + 1, offset=chunk.offset * 4
            )
            data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)
            for i in range(len(chunk)):
                total += data[offsets[i] : offsets[i + 1]].view(np.float16).size
        elif layout == "fixed_size_binary":
            arr = np.frombuffer(chunk.buffers()[1], dtype=np.float16)
            total += arr.size
        else:
            total += chunk.flatten().to_numpy(zero_copy_only=False).size
    return total


def bench(
    layout: str, compression: str, data: np.ndarray, repeat: int, folder: str
) -> tuple[float, float, float]:
    arr = make_array(layout, data)
    table = pa.table({"key": pa.array([f"k{i}" for i in range(len(arr))]), "t": arr})
    nbytes = data.nbytes
    defaults = layout == "binary (pyarrow defaults)"
    kwargs: dict = {"compression": compression}
    if not defaults:
        kwargs.update(use_dictionary=["key"], write_statistics=["key"])
    path = os.path.join(folder, "t.parquet")
    best_w = best_r = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        pq.write_table(table, path, **kwargs)
        best_w = min(best_w, time.perf_counter() - t0)
        t0 = time.perf_counter()
        n = read_back(path, layout)
        best_r = min(best_r, time.perf_counter() - t0)
        assert n == data.size, (n, data.size)
    ratio = os.path.getsize(path) / nbytes
    return nbytes / best_w / 1e6, nbytes / best_r / 1e6, ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer combinations (CI smoke run)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    # Latent-like values: a posterior mean is roughly N(0, 1) at float16.
    data = rng.standard_normal((args.rows, N_VALUES), dtype=np.float32).astype(np.float16)
    layouts = [
        "binary",
        "fixed_size_binary",
        "fixed_size_list<float16>",
        "list<float16>",
        "binary (pyarrow defaults)",
    ]
    comps = ["none", "lz4", "snappy", "zstd"]
    if args.quick:
        layouts, comps = ["binary", "fixed_size_list<float16>"], ["none"]
    print(f"{args.rows} rows x 128 KiB float16 = {data.nbytes / 2**20:.0f} MiB; best of {args.repeat}")
    print(f"{'layout':28s} {'compression':12s} {'write MB/s':>11s} {'read MB/s':>10s} {'size':>6s}")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for layout in layouts:
            for comp in comps if "defaults" not in layout else ["zstd"]:
                w, r, ratio = bench(layout, comp, data, args.repeat, folder)
                results[(layout, comp)] = (w, r)
                print(f"{layout:28s} {comp:12s} {w:11.0f} {r:10.0f} {ratio:6.2f}")
    base = results[("fixed_size_list<float16>", "none")]
    ours = results[("binary", "none")]
    print(
        "binary/none vs fixed_size_list<float16>/none: "
        f"write x{ours[0] / base[0]:.1f}, read x{ours[1] / base[1]:.1f}"
    )


if __name__ == "__main__":
    main()
