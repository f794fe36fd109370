"""Fetch Stanford Cars over one of the routes of ``src/carbench/resources/sources.yaml``; each yields a local
folder to read.

Kinds of route (``routes[].kind`` there), each with the field's own client:

- ``kaggle``: ``kagglehub.dataset_download(ref)`` (``ref/versions/<revision>`` when pinned), anonymous where
  Kaggle allows it, else with ``KAGGLE_USERNAME``/``KAGGLE_KEY`` or ``~/.kaggle/kaggle.json``; kagglehub keeps
  its own cache. ``files`` adds pinned extras (the test labels a copy lacks), fetched by URL with md5.
- ``urls``: every file of ``files`` from its URLs in order (resume, md5 when given) into
  ``<cache_dir>/<route name>/``: the four official archives, ``car_ims.tgz`` + ``cars_annos.mat``, or one
  archive of either packaging.
- ``huggingface``: ``huggingface_hub.hf_hub_download`` of each file of ``files`` from the dataset repo ``ref`` at
  the pinned ``revision`` (md5 when given); the hub's cache is linked into ``<cache_dir>/<route name>/``.
- ``hf_parquet``: ``huggingface_hub.snapshot_download`` of the repo's parquet files at the pinned revision.

The hub's own log lines (a warning per retry) are off while a route runs: the stage reports one line per route.
When the hub's host name does not resolve and no proxy is set (no network), its routes fail at once instead of
retrying for about 25 s.

A route that cannot deliver (no network, refused, a missing client package) raises :class:`RouteFailed`
with the reason; whether what it delivered *is* Stanford Cars is decided afterwards, by the fingerprint.
No credential is ever printed: messages only say whether the variables are set.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from .sources import Route, RouteFile
from .fetch import FetchError, fetch_file
from ..core.io import file_md5
from .layouts import TEST_LABELS

KAGGLE_CREDENTIALS = ("KAGGLE_USERNAME", "KAGGLE_KEY")


class RouteFailed(Exception):
    """A route could not deliver files (network, authentication, a missing package, offline)."""


def describe(route: Route) -> str:
    """``name (kind ref@revision)`` for messages."""
    where = route.ref or ", ".join(route.files)
    pin = f"@{route.revision}" if route.revision else ""
    return f"{route.name} ({route.kind} {where}{pin})"


def fetch(route: Route, cache_dir: Path, timeout: float) -> tuple[Path, Optional[Path]]:
    """Fetch ``route``; return ``(folder to read, separate test-labels file or None)``."""
    if route.kind == "kaggle":
        return _kaggle(route, cache_dir, timeout)
    if route.kind == "urls":
        return _fetch_files(route, cache_dir, timeout), None
    if route.kind == "huggingface":
        return _huggingface_files(route, cache_dir), None
    return _huggingface_parquet(route), None


# ----------------------------------------------------------------------------- kaggle
def _kaggle_auth_hint() -> str:
    present = [name for name in KAGGLE_CREDENTIALS if os.environ.get(name)]
    config = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    if len(present) == len(KAGGLE_CREDENTIALS) or config.is_file():
        return "Kaggle credentials are set; check that they are valid and that you accepted the dataset's terms"
    return ("no Kaggle credentials are set: if Kaggle refuses anonymous downloads, create an API token on "
            "kaggle.com (Settings > API) and set KAGGLE_USERNAME and KAGGLE_KEY (or ~/.kaggle/kaggle.json)")


def _kaggle(route: Route, cache_dir: Path, timeout: float) -> tuple[Path, Optional[Path]]:
    try:
        import kagglehub
    except ImportError:
        raise RouteFailed("the kagglehub package is not installed (pip install kagglehub)") from None
    handle = f"{route.ref}/versions/{route.revision}" if route.revision else str(route.ref)
    try:
        folder = Path(kagglehub.dataset_download(handle))
    except Exception as exc:  # kagglehub raises requests/HTTP/its own errors; all mean "not delivered"
        raise RouteFailed(f"kagglehub.dataset_download({handle!r}) failed: {_one_line(exc)}; "
                          f"{_kaggle_auth_hint()}") from None
    extras = _fetch_files(route, cache_dir, timeout) if route.files else None
    labels = extras / TEST_LABELS if extras is not None and (extras / TEST_LABELS).is_file() else None
    return folder, labels


# ----------------------------------------------------------------------------- URLs
def _fetch_files(route: Route, cache_dir: Path, timeout: float) -> Path:
    """Every file of ``route.files`` into ``<cache_dir>/<route name>/`` (cached files are not fetched again)."""
    folder = cache_dir / route.name
    folder.mkdir(parents=True, exist_ok=True)
    for name, entry in route.files.items():
        candidates = [(f"{route.name}#{i + 1}", url) for i, url in enumerate(entry.urls)]
        try:
            fetch_file(name, candidates, entry.md5, folder, timeout)
        except FetchError as exc:
            raise RouteFailed(str(exc)) from None
    return folder


# ----------------------------------------------------------------------------- Hugging Face
def _hub():
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError:
        raise RouteFailed("the huggingface_hub package is not installed (pip install huggingface_hub)") from None
    _check_reachable(constants.ENDPOINT)
    return huggingface_hub


def _check_reachable(endpoint: str) -> None:
    """Fail at once when ``endpoint``'s host name does not resolve: the hub would retry a connection that cannot
    work, for about 25 s and a warning a try. Behind a proxy the proxy resolves names, so nothing is checked."""
    host = urllib.parse.urlsplit(endpoint).hostname
    proxies = {k for k in urllib.request.getproxies() if k != "no"}
    if not host or (proxies and not urllib.request.proxy_bypass(host)):
        return
    try:
        socket.getaddrinfo(host, None)
    except OSError as exc:
        raise RouteFailed(f"cannot resolve {host} (no network?): {exc.strerror or exc}") from None


@contextlib.contextmanager
def _quiet(hub):
    """The hub's warnings off (a line per retry), restored afterwards: a failed route is reported in one line."""
    level = hub.logging.get_verbosity()
    hub.logging.set_verbosity_error()
    try:
        yield
    finally:
        hub.logging.set_verbosity(level)


def _check_md5(path: Path, entry: RouteFile, label: str) -> None:
    if entry.md5 is None:
        return
    got = file_md5(path)
    if got != entry.md5.lower():
        raise RouteFailed(f"{label}: md5 mismatch, got {got}, expected {entry.md5}")


def _huggingface_files(route: Route, cache_dir: Path) -> Path:
    hub = _hub()
    folder = cache_dir / route.name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, entry in route.files.items():
        try:
            with _quiet(hub):
                path = Path(hub.hf_hub_download(repo_id=str(route.ref), filename=name, repo_type="dataset",
                                                revision=route.revision))
        except Exception as exc:  # HTTP, offline, missing revision or file: all mean "not delivered"
            raise RouteFailed(f"hf_hub_download({route.ref}, {name}, revision={route.revision}) failed: "
                              f"{_one_line(exc)}") from None
        _check_md5(path, entry, f"{route.ref}/{name}")
        (folder / Path(name).name).symlink_to(path.resolve())
    return folder


def _huggingface_parquet(route: Route) -> Path:
    hub = _hub()
    try:
        with _quiet(hub):
            return Path(hub.snapshot_download(repo_id=str(route.ref), repo_type="dataset", revision=route.revision,
                                              allow_patterns=list(route.patterns)))
    except Exception as exc:
        raise RouteFailed(f"snapshot_download({route.ref}, revision={route.revision}) failed: "
                          f"{_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= 300 else text[:297] + "..."
