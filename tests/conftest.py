"""Shared test fixtures. All data is generated (no network; loopback HTTP only) and small.

Session-scoped, built once and **read-only** (copy them before changing anything):

- ``synthetic_source``: a tiny synthetic dataset in torchvision's ``stanford_cars`` layout
  (``SYNTHETIC_TINY``: 4 classes, 6 train + 3 test images each, 64-96 px, ~1 in 4 grayscale);
- ``synthetic_raw``: its download-stage output (``images.bin``, ``manifest.csv``, ``classes.json``);
- ``synthetic_split``: the split-stage output (``split.csv``; official strategy, val_fraction 0.2);
- ``synthetic_crops``: the crop store (``CROP_SIZE_TINY`` px crops; read it with ``carbench.data.store``).

Tests never read the workspace's params.yaml: ``params_path`` (session fixture) is a copy of the committed
one, ``repo_params()`` its content (see ``committed_params_text``).

Plain helpers (import them with ``from conftest import ...``): ``repo_params``, ``deep_merge``,
``synthetic_config``/``split_config``/``crop_config`` (validated config sections), ``make_official_archives``.

Function-scoped helpers: ``params_file(overrides)`` writes the repository's params.yaml with deep-merged
overrides into ``tmp_path``; ``shared_data`` is ``../shared/data`` (skips when absent); ``http_server`` serves
bytes from 127.0.0.1 with HTTP Range support.
"""
from __future__ import annotations

import copy
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SYNTHETIC_TINY = {"num_classes": 4, "train_per_class": 6, "test_per_class": 3,
                  "min_size": 64, "max_size": 96, "grayscale_fraction": 0.25}
CROP_SIZE_TINY = 32
SEED = 0


def deep_merge(base: dict, over: dict) -> dict:
    """A copy of ``base`` with ``over`` merged in, recursively for nested mappings."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


#: Tests read the committed params.yaml (``git show HEAD:params.yaml``), never the workspace's: that file is
#: the user's to change (`dvc exp run -S ...` writes into it). Set this variable to a params file to test
#: that one instead (e.g. ``CARBENCH_TEST_PARAMS=params.yaml`` while editing params.yaml before a commit).
TEST_PARAMS_ENV = "CARBENCH_TEST_PARAMS"


def committed_params_text() -> str:
    """The text of the committed params.yaml (outside a git checkout: the file shipped beside the tests)."""
    import os
    import subprocess

    chosen = os.environ.get(TEST_PARAMS_ENV)
    if chosen:
        return Path(chosen).read_text()
    result = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode == 0:
        return result.stdout
    return (ROOT / "params.yaml").read_text()


def committed_params_file(tmp_path_factory) -> Path:
    """The committed params.yaml written into a fresh temporary directory."""
    path = tmp_path_factory.mktemp("committed") / "params.yaml"
    path.write_text(committed_params_text())
    return path


def repo_params(overrides: Optional[dict] = None) -> dict:
    """The repository's committed params.yaml as a dict, with ``overrides`` deep-merged."""
    return deep_merge(yaml.safe_load(committed_params_text()), overrides or {})


@pytest.fixture(scope="session")
def params_path(tmp_path_factory) -> Path:
    """Path of a copy of the committed params.yaml (read-only)."""
    return committed_params_file(tmp_path_factory)


def synthetic_config(**overrides: Any):
    """A validated :class:`carbench.config.SyntheticConfig` (``SYNTHETIC_TINY`` unless overridden)."""
    from carbench.config import SyntheticConfig, build

    return build(SyntheticConfig, {**SYNTHETIC_TINY, **overrides}, "data.synthetic")


def crop_config(**overrides: Any):
    """A validated :class:`carbench.config.CropConfig` (tiny crops, one worker unless overridden)."""
    from carbench.config import CropConfig, build

    raw = {"margin": 0.0, "size": CROP_SIZE_TINY, "keep_aspect": False, "workers": 1, "preview": 8}
    return build(CropConfig, {**raw, **overrides}, "crop")


def split_config(**overrides: Any):
    """A validated :class:`carbench.config.SplitConfig` (official strategy unless overridden)."""
    from carbench.config import SplitConfig, build

    raw = {"strategy": "official", "val_fraction": 0.2, "test_fraction": 0.2, "allow_missing_classes": False}
    return build(SplitConfig, {**raw, **overrides}, "split")


def make_official_archives(source: Path, dest: Path) -> dict[str, Path]:
    """Pack a torchvision-layout folder as the official files (cars_train.tgz, cars_test.tgz, car_devkit.tgz,
    cars_test_annos_withlabels.mat) into ``dest``; returns name -> path."""
    import shutil
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    for archive, folder in (("cars_train.tgz", "cars_train"), ("cars_test.tgz", "cars_test"),
                            ("car_devkit.tgz", "devkit")):
        with tarfile.open(dest / archive, "w:gz") as tar:
            tar.add(source / folder, arcname=folder)
    shutil.copyfile(source / "cars_test_annos_withlabels.mat", dest / "cars_test_annos_withlabels.mat")
    return {p.name: p for p in dest.iterdir()}


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory) -> Path:
    """A tiny synthetic dataset in torchvision's ``stanford_cars`` layout (read-only)."""
    from carbench.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic") / "stanford_cars"
    generate(root, synthetic_config(), SEED)
    return root


@pytest.fixture(scope="session")
def synthetic_raw(synthetic_source, tmp_path_factory) -> Path:
    """``data/raw`` built from ``synthetic_source`` (read-only)."""
    from carbench.data.layouts import open_local
    from carbench.data.manifest import build_raw

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
def shared_data() -> Path:
    """``../shared/data`` with the real Stanford Cars subsets; skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA}")
    return SHARED_DATA


# ----------------------------------------------------------------------------- loopback HTTP
class FileServer:
    """Serves ``files[path] = bytes`` on 127.0.0.1; honours ``Range: bytes=N-``.

    ``drop_after[path] = n``: send only n bytes of the body, then close (an interrupted transfer).
    ``ignore_range``: answer 200 with the whole file even when asked for a range.
    ``requests``: (path, Range header or None) of every request, in order.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, Optional[str]]] = []
        self.sent: dict[str, int] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{path.lstrip('/')}"

    def _handler(self) -> type:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                path = self.path.lstrip("/")
                header = self.headers.get("Range")
                owner.requests.append((path, header))
                if path not in owner.files:
                    self.send_error(404)
                    return
                body, start = owner.files[path], 0
                if header and not owner.ignore_range:
                    start = int(header.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                payload = payload[:owner.drop_after.get(path, len(payload))]
                # counted before writing: the client may read the last byte (and the test look at `sent`)
                # before this thread runs again
                owner.sent[path] = owner.sent.get(path, 0) + len(payload)
                self.wfile.write(payload)

        return Handler

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


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
