"""Fixtures of the config tests."""
from __future__ import annotations

import pytest
from support.params import repo_params


@pytest.fixture(scope="module")
def raw() -> dict:
    """The committed params as a dict (module-scoped: copy before changing it)."""
    return repo_params()
