"""Fixtures shared with the pipeline tests, and small SA-1B style tars for the lease tests."""

from pathlib import Path

import pytest

from tests.builders import sam_member_pairs, write_tar
from tests.pipeline.conftest import tiny_models  # noqa: F401  (a fixture: tiny random-weight models)


@pytest.fixture
def sam_tars(tmp_path: Path) -> Path:
    """Four SA-1B style tars of three photos each (a run of four shards)."""
    d = tmp_path / "sa1b"
    for t in range(4):
        write_tar(d / f"sa_{t:06d}.tar", sam_member_pairs(t * 10, 3))
    return d
