"""Reopening images by reference from compressed webdataset shards (``.tar.gz``), as encode does.

    python benchmarks/reopen_refs.py [--images 200 800] [--repeats 3]

A ``.tar.gz`` member has no byte range, so each reference names only its member. The baseline is
what a reference alone allows: stream the tar from its start until the member (one decompression
per image, so quadratic in the shard size). ``ImageOpener`` decompresses the shard once into a
temporary file and reads each member from there. Shards are generated (small JPEGs, captions), so
the figures depend on this machine only.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
from pathlib import Path

from _common import ROOT, best_of, table

sys.path.insert(0, str(ROOT))

from recaption.readers import ImageOpener, ImageRef, Sample, open_source
from tests.builders import wds_sample, write_tar


def stream_to_member(ref: ImageRef) -> bytes:
    """The baseline: scan the compressed tar from its start to the member."""
    with tarfile.open(ref.uri, mode="r|*") as tf:
        for info in tf:
            if info.name == ref.member:
                f = tf.extractfile(info)
                assert f is not None
                return f.read()
    raise KeyError(ref.member)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=[200, 800])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="recaption-refs-"))
    header = ["images", "ImageOpener img/s", "stream-to-member img/s", "ratio"]
    rows = []
    for n in args.images:
        members = []
        for i in range(n):
            members += wds_sample(f"{i:06d}", f"a photo number {i}", seed=i)
        write_tar(tmp / str(n) / "00000.tar.gz", members)
        refs = [
            s.ref for s in open_source(str(tmp / str(n))).iter_samples() if isinstance(s, Sample) and s.ref
        ]

        def opener_run(refs: list[ImageRef] = refs) -> None:
            o = ImageOpener()
            for r in refs:
                o.read(r)
            o.close()

        def baseline_run(refs: list[ImageRef] = refs) -> None:
            for r in refs:
                stream_to_member(r)

        ours = best_of(opener_run, args.repeats)
        base = best_of(baseline_run, 1 if n > 400 else args.repeats)
        rows.append([str(n), f"{n / ours:,.0f}", f"{n / base:,.0f}", f"{base / ours:,.0f}x"])
        print(table(rows[-1:], header), flush=True)
    print()
    print(table(rows, header))


if __name__ == "__main__":
    main()
