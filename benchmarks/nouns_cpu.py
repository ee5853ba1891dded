"""Noun counting throughput on the real dense captions, against the plain spaCy loop, same run.

    PYTHONPATH=. python benchmarks/nouns_cpu.py [--fields IIW,IIW-P5B] [--workers 1,2]
                                                [--backend process|ray|both] [--repeats 1]

Measures, on the real dense captions of ``../shared/data/dense/iiw_IIW-400.jsonl`` (400 human
``IIW`` descriptions of ~190 words and 100 machine ``IIW-P5B`` ones of ~105 words):

1. the baseline: ``[nlp(t) for t in texts]`` with the full ``en_core_web_sm`` pipeline (spaCy's
   defaults, one process), nouns then read from the Docs with the same options;
2. the project's ``NounCounter`` in this process, BLAS pinned to one thread (one core);
3. the project's ``NounPool`` with 1 and 2 worker processes (or Ray actors), one model each,
   timed after start-up (start-up printed apart).

It prints captions/s, words/s and the ratio to the baseline, and checks that the nouns of every
caption equal those read from the full pipeline. Timings are wall clock, best of ``--repeats``
(after a warm-up on the first captions, for every method alike). With ``--repeats`` above 1 the
same texts run again, so every method's tokenizer cache is warm: the project's counter, whose
network is cheaper, gains more from that than the baseline does; ``--repeats 1`` is the stricter
figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RECAPTION_SHARED", ROOT.parent / "shared")) / "data"
DEFAULT_DATA = SHARED_DATA / "dense" / "iiw_IIW-400.jsonl"
WARMUP = 10


def load_texts(path: Path, fields: list[str]) -> list[str]:
    texts: list[str] = []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for name in fields:
        texts += [r[name] for r in rows if isinstance(r.get(name), str) and r[name].strip()]
    return texts


def best(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    out: object = None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--fields", default="IIW,IIW-P5B", help="comma-separated caption fields")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--backend", choices=["process", "ray", "both"], default="process")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=None)
    args = ap.parse_args()
    if not args.data.exists():
        print(f"data not found: {args.data} (set RECAPTION_SHARED to the shared folder)", file=sys.stderr)
        return 2

    import spacy

    from recaption.nouns.counter import NounCounter
    from recaption.nouns.options import MODEL_ALIASES, NounOptions
    from recaption.nouns.parallel import NounPool, set_blas_threads

    texts = load_texts(args.data, args.fields.split(","))
    words = sum(len(t.split()) for t in texts)
    opts = NounOptions() if args.batch_size is None else NounOptions(batch_size=args.batch_size)
    print(
        f"{len(texts)} captions, {words:,} words ({words / len(texts):.0f}/caption) from {args.data.name} "
        f"[{args.fields}]; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}"
    )
    print(f"options: {opts}")

    # 1. The baseline: the full pipeline, one nlp() call per text.
    name = next(n for n in (opts.model, *MODEL_ALIASES.get(opts.model, ())) if spacy.util.is_package(n))
    nlp_full = spacy.load(name)
    print(f"baseline pipeline {name}: {nlp_full.pipe_names}")
    [nlp_full(t) for t in texts[:WARMUP]]
    t_plain, docs = best(lambda: [nlp_full(t) for t in texts], args.repeats)

    # 2. The project's counter in this process, on one core.
    set_blas_threads(1)
    counter = NounCounter(opts).load()
    print(f"counter pipeline: {counter.nlp.pipe_names} (fast path: {counter.fast_path})")
    reference = [counter.nouns_from_doc(d) for d in docs]  # type: ignore[union-attr]
    counter.count(texts[:WARMUP])
    t_one, results = best(lambda: counter.count(texts), args.repeats)
    ours = [r.nouns for r in results]  # type: ignore[union-attr]

    rows: list[list[str]] = []

    def row(label: str, seconds: float, startup: str = "") -> None:
        rows.append(
            [
                label,
                f"{len(texts) / seconds:,.1f}",
                f"{words / seconds:,.0f}",
                f"{t_plain / seconds:.2f}x",
                startup,
            ]
        )

    row("baseline: [nlp(t) for t in texts], full en_core_web_sm", t_plain)
    row("NounCounter, this process, 1 BLAS thread", t_one)

    # 3. Worker pools.
    backends = ["process", "ray"] if args.backend == "both" else [args.backend]
    pool_equal = True
    for backend in backends:
        for w in (int(x) for x in args.workers.split(",")):
            t0 = time.perf_counter()
            with NounPool(opts, workers=w, backend=backend) as pool:
                startup = time.perf_counter() - t0
                pool.count(texts[: WARMUP * w], chunk_size=WARMUP)
                chunk = max(8, len(texts) // (8 * w))
                t_pool, res = best(
                    lambda pool=pool, chunk=chunk: pool.count(texts, chunk_size=chunk, keep_captions=True),
                    args.repeats,
                )
            pool_equal &= [r.nouns for r in res.captions] == ours  # type: ignore[union-attr]
            row(f"NounPool, {backend}, {w} worker{'s' * (w > 1)}", t_pool, f"{startup:.1f}")

    print()
    print(table(rows, ["method", "captions/s", "words/s", "vs baseline", "start-up s"]))
    same = sum(a == b for a, b in zip(ours, reference, strict=True))
    total_ours, total_ref = Counter(n for x in ours for n in x), Counter(n for x in reference for n in x)
    print()
    print(
        f"nouns equal to the full pipeline's (same options): {same}/{len(texts)} captions identical; "
        f"total {sum(total_ours.values()):,} vs {sum(total_ref.values()):,}; "
        f"distinct {len(total_ours):,} vs {len(total_ref):,}; counts identical: {total_ours == total_ref}"
    )
    print(f"pool results identical to the single counter's: {pool_equal}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0 if same == len(texts) and pool_equal else 1


if __name__ == "__main__":
    sys.exit(main())
