"""Where Stanford Cars comes from and what it must be: ``src/carbench/resources/sources.yaml``.

The routes and the dataset fingerprint are the code's data, not knobs: they live in a tracked file next to the
reference annotations, which the download stage depends on (dvc.yaml), instead of in ``params.yaml``. A user
whose routes all fail adds one to that file. Tests pass their own :class:`Sources` to
:func:`carbench.download.acquire.acquire`; the stage always reads :data:`SOURCES`.

The file is validated with the same machinery as ``params.yaml`` (:func:`carbench.config.build`): an unknown
key, a wrong type or a route without what its kind needs raises :class:`ConfigError` naming the file and key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..config import build, read_yaml
from ..config.schema import _f
from ..core.errors import ConfigError

#: The file the download stage reads (a dvc.yaml dep of the download stage).
SOURCES = Path(__file__).resolve().parents[1] / "resources" / "sources.yaml"

ROUTE_KINDS = ("kaggle", "urls", "huggingface", "hf_parquet")


@dataclass(frozen=True)
class RouteFile:
    """One file a route fetches: URLs tried in order (a Hugging Face route names repo files, no URL)."""

    urls: tuple[str, ...] = _f((), doc="URLs tried in order (resumed with HTTP Range); none for a Hugging Face file")
    md5: Optional[str] = _f(None, doc="checked when given; the dataset fingerprint is checked always")


@dataclass(frozen=True)
class Route:
    """A way to get Stanford Cars from the internet (see carbench.download.routes)."""

    name: str = _f(doc="unique name, in messages and in metrics/data.json")
    kind: str = _f(choices=ROUTE_KINDS, doc="the client that fetches it (carbench.download.routes)")
    ref: Optional[str] = _f(None, doc="kaggle: owner/dataset; huggingface, hf_parquet: the dataset repo id")
    revision: Optional[str] = _f(None, doc="huggingface, hf_parquet: pinned commit (required); kaggle: dataset "
                                         "version number")
    files: dict[str, RouteFile] = _f(factory=dict, doc="urls, huggingface: what to fetch, by file name; kaggle: "
                                                       "extra files the copy lacks (the test labels)")
    patterns: tuple[str, ...] = _f(("*.parquet",), doc="hf_parquet: the repo files to fetch")
    checked: bool = _f(False, doc="true only once this route was fetched and matched the fingerprint")

    def check(self, where: str) -> None:
        if self.kind in ("kaggle", "huggingface", "hf_parquet") and not self.ref:
            raise ConfigError(f"{where}.ref must name the {self.kind} dataset for route {self.name!r}")
        if self.kind in ("urls", "huggingface") and not self.files:
            raise ConfigError(f"{where}.files must list what route {self.name!r} fetches")
        if self.kind == "urls":
            for name, entry in self.files.items():
                if not entry.urls:
                    raise ConfigError(f"{where}.files.{name}.urls must list at least one URL")
        if self.kind in ("huggingface", "hf_parquet") and not self.revision:
            raise ConfigError(f"{where}.revision must pin a commit of {self.ref} (route {self.name!r})")


@dataclass(frozen=True)
class ExpectedData:
    """The dataset every downloaded route must match (carbench.download.fingerprint)."""

    sha256: str = _f(doc="fingerprint over split, class and box of every image")
    labels_sha256: str = _f(doc="the same over split and class only (routes without boxes)")
    train: int = _f(min=0, doc="images in the official train split")
    test: int = _f(min=0, doc="images in the official test split")
    annotations: Optional[str] = _f(None, doc="the reference lines (csv.gz), to name what differs; relative to "
                                              "the sources file")


@dataclass(frozen=True)
class Sources:
    """The content of a sources file: the fingerprint, then the routes ``data.source: auto`` tries in order."""

    expected: ExpectedData = _f(doc="the dataset every route must deliver")
    routes: tuple[Route, ...] = _f(doc="tried in order by data.source: auto; the first that matches wins")

    def check(self, where: str) -> None:
        if not self.routes:
            raise ConfigError(f"{where}.routes must list at least one route")
        names = [r.name for r in self.routes]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"{where}.routes: two routes are named {name!r}")


def parse_sources(raw: Any, folder: Path) -> Sources:
    """Validate a sources mapping; ``expected.annotations`` is resolved against ``folder`` (the file's)."""
    sources = build(Sources, raw, "sources")
    annotations = sources.expected.annotations
    if annotations is None:
        return sources
    path = folder / annotations
    if not path.is_file():
        raise ConfigError(f"sources.expected.annotations: {path} is not a file")
    expected = build(ExpectedData, {**raw["expected"], "annotations": str(path)}, "sources.expected")
    return Sources(expected=expected, routes=sources.routes)


def shown(path: Path) -> str:
    """``path`` relative to the working directory when inside it (shorter messages)."""
    try:
        return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:
        return str(path)


def load_sources(path: str | Path = SOURCES) -> Sources:
    """Read and validate a sources file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sources file not found: {path}")
    try:
        return parse_sources(read_yaml(path), path.parent)
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(str(path)) else f"{shown(path)}: {message}") from None
