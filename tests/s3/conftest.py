"""The S3 tests' fixtures (``tests/s3/server.py``): skipped where s3fs or moto is not installed."""

from __future__ import annotations

import pytest

pytest.importorskip("s3fs", reason="the S3 tests need s3fs (pip install -e '.[dev]')")
pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (pip install -e '.[dev]')")

from tests.pipeline.conftest import tiny_models  # noqa: F401  (a fixture: tiny random-weight models)
from tests.s3.server import s3, s3_endpoint  # noqa: F401  (fixtures: the loopback S3 server)
