"""Fixtures of the ``carbench app`` tests: the world of :mod:`support.app` (module-scoped, read-only: copy before
changing anything) and a :class:`~carbench.app.showroom.Showroom` on it."""
from __future__ import annotations

import pytest
from support.app import make_app_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_app_world(tmp_path_factory.mktemp("app_world"))


@pytest.fixture(scope="module")
def showroom(world):
    from carbench.app.showroom import Showroom

    return Showroom(world.models, world.crops, world.eval, "cpu")
