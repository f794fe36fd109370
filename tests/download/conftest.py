"""Fixtures of the download tests: shared with the data tests (support.source_fixtures)."""
from support.source_fixtures import baseline, expected, source  # noqa: F401
