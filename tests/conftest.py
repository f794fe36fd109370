"""Shared test fixtures. All data is generated (no network; loopback HTTP only) and small.

Session-scoped, built once and **read-only** (copy them before changing anything):

- ``synthetic_source``: a tiny synthetic dataset in torchvision's ``stanford_cars`` layout
  (``SYNTHETIC_TINY``: 4 classes, 6 train + 3 test images each, 64-96 px, ~1 in 4 grayscale);
- ``synthetic_raw``: its download-stage output (``images.bin``, ``manifest.csv``, ``classes.json``);
- ``synthetic_split``: the split-stage output (``split.csv``; official strategy, val_fraction 0.2);
- ``synthetic_crops``: the crop store (``CROP_SIZE_TINY`` px crops; read it with ``carbench.data.store``).

Tests never read the workspace's params.yaml: ``params_path`` (session fixture) is a copy of the committed
one (``support.params``).

Module-scoped crop stores for training tests (``support.training`` writes them): ``store`` (4 classes, 20 px) and
``ddp_store`` (the DDP tests': 64 train / 48 val images, 16 px).

Function-scoped helpers: ``params_file(overrides)`` writes the repository's params.yaml with deep-merged
overrides into ``tmp_path``; ``real_data`` is the folder of real photos
(``$CARBENCH_REAL_DATA``; skips when absent); ``http_server`` serves
bytes from 127.0.0.1 with HTTP Range support; ``one_thread`` runs a test with one torch thread.

Plain helpers are modules of ``tests/support/`` (``from support.params import repo_params``); fixtures of one
package's tests are in that folder's ``conftest.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest
import yaml
from support.data import SEED, crop_config, split_config, synthetic_config
from support.http import FileServer
from support.params import REAL_DATA, REAL_DATA_ENV, committed_params_file, repo_params


@pytest.fixture(scope="session")
def params_path(tmp_path_factory) -> Path:
    """Path of a copy of the committed params.yaml (read-only)."""
    return committed_params_file(tmp_path_factory)


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory) -> Path:
    """A tiny synthetic dataset in torchvision's ``stanford_cars`` layout (read-only)."""
    from carbench.download.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic") / "stanford_cars"
    generate(root, synthetic_config(), SEED)
    return root


@pytest.fixture(scope="session")
def synthetic_raw(synthetic_source, tmp_path_factory) -> Path:
    """``data/raw`` built from ``synthetic_source`` (read-only)."""
    from carbench.download.layouts import open_local
    from carbench.download.manifest import build_raw

    out = tmp_path_factory.mktemp("pipeline") / "raw"
    with open_local(synthetic_source, out.parent / "scratch") as source:
        build_raw(source, out, skip_bad=False)
    return out


@pytest.fixture(scope="session")
def synthetic_split(synthetic_raw) -> Path:
    """``data/split`` for ``synthetic_raw`` (read-only)."""
    from carbench.data.split import write_split

    out = synthetic_raw.parent / "split"
    write_split(split_config(), SEED, synthetic_raw, out, None, None)
    return out


@pytest.fixture(scope="session")
def synthetic_crops(synthetic_raw, synthetic_split) -> Path:
    """The crop store ``data/crops`` for the tiny synthetic dataset (read-only)."""
    from carbench.data.crop import write_crops

    out = synthetic_raw.parent / "crops"
    write_crops(crop_config(), False, synthetic_raw, synthetic_split, out, None, None)
    return out


@pytest.fixture
def params_file(tmp_path) -> Callable[[Optional[dict]], Path]:
    """``params_file(overrides)`` writes ``tmp_path/params.yaml`` (repository params + overrides)."""
    def write(overrides: Optional[dict] = None) -> Path:
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(repo_params(overrides), sort_keys=False))
        return path

    return write


@pytest.fixture
def real_data() -> Path:
    """The folder of real Stanford Cars subsets (``$CARBENCH_REAL_DATA``); skips the test when absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real photos not available at {REAL_DATA} (set {REAL_DATA_ENV} to their folder)")
    return REAL_DATA


# ----------------------------------------------------------------------------- loopback HTTP


@pytest.fixture
def http_server(monkeypatch) -> Iterator[FileServer]:
    """A :class:`FileServer` on 127.0.0.1 (proxies bypassed for it)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FileServer() as server:
        yield server


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: tiny models run faster so, and other processes cannot slow them."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- crop stores for training
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A tiny crop store (``support.training``: 4 classes, 20 px, 24/12/8 images) for training tests."""
    from support.training import write_store

    return write_store(tmp_path_factory.mktemp("crops"))


@pytest.fixture(scope="module")
def ddp_store(tmp_path_factory) -> Path:
    """For the DDP tests: a crop store whose classes differ in mean colour (learnable in a few epochs), with 48 val images."""
    import numpy as np
    from support.training import DDP_COUNTS, write_store

    colours = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60]])
    return write_store(tmp_path_factory.mktemp("crops"), counts=DDP_COUNTS, size=16, colours=colours)
