"""Fixtures for the noun counter's tests: one spaCy model per option set per session, real data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recaption.nouns.counter import NounCounter
from recaption.nouns.options import NounOptions

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("RECAPTION_SHARED", ROOT.parent / "shared"))
LAION_PARQUET = SHARED / "data" / "laion" / "img2dataset_test_1000.parquet"
DENSE_JSONL = SHARED / "data" / "dense" / "iiw_IIW-400.jsonl"


@pytest.fixture(scope="session")
def counter_for():
    """``counter_for(**changes)``: a loaded counter for ``NounOptions(**changes)``, cached."""
    cache: dict[NounOptions, NounCounter] = {}

    def get(**changes: object) -> NounCounter:
        opts = NounOptions(**changes)  # type: ignore[arg-type]
        if opts not in cache:
            cache[opts] = NounCounter(opts).load()
        return cache[opts]

    return get


@pytest.fixture(scope="session")
def counter(counter_for) -> NounCounter:
    """The counter with default options."""
    return counter_for()


@pytest.fixture(scope="session")
def laion_texts() -> list[str | None]:
    if not LAION_PARQUET.exists():
        pytest.skip(f"real LAION captions not found at {LAION_PARQUET} (set RECAPTION_SHARED)")
    import pyarrow.parquet as pq

    return pq.read_table(LAION_PARQUET, columns=["TEXT"]).column("TEXT").to_pylist()


@pytest.fixture(scope="session")
def dense_rows() -> list[dict]:
    if not DENSE_JSONL.exists():
        pytest.skip(f"real dense captions not found at {DENSE_JSONL} (set RECAPTION_SHARED)")
    return [json.loads(line) for line in DENSE_JSONL.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="session")
def iiw_texts(dense_rows) -> list[str]:
    return [r["IIW"] for r in dense_rows]
