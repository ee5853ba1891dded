"""Fixtures shared with the pipeline tests."""

from tests.pipeline.conftest import tiny_models  # noqa: F401  (a fixture: tiny random-weight models)
