"""Fixtures of the data tests: shared with the download tests (support.source_fixtures)."""
from support.source_fixtures import baseline, expected, source  # noqa: F401
