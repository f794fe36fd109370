"""The ``data/raw`` store's format, its one owner: ``images.bin`` (the original image bytes, concatenated),
``manifest.csv`` (one row per image: label, box, size and byte slice) and ``classes.json``.

The download stage writes it (:mod:`carbench.download.manifest` checks and packs the photos, then calls the writers
here); split and crop read it. Kept apart from the packing so that split and crop depend on the format alone,
not on the download-side readers (layouts, .mat files, archives, fingerprint): a change to one of those reruns
``download`` and, only if ``data/raw`` changed, what follows.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..core.errors import DataError
from ..core.io import read_json, write_json

MANIFEST = "manifest.csv"
IMAGES_BIN = "images.bin"
CLASSES_JSON = "classes.json"
MANIFEST_COLUMNS = ("image", "class_id", "official_class", "class_name", "x1", "y1", "x2", "y2",
                    "official_split", "width", "height", "offset", "nbytes")


def write_manifest(raw_dir: str | Path, rows: Iterable[Sequence[Any]]) -> None:
    """Write ``manifest.csv`` of ``raw_dir``: a header, then one row per image in :data:`MANIFEST_COLUMNS` order."""
    with open(Path(raw_dir) / MANIFEST, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)


def write_classes(raw_dir: str | Path, classes: dict[str, Any]) -> None:
    """Write ``classes.json`` of ``raw_dir`` (class_names, official_classes, source, optional extra_classes)."""
    write_json(Path(raw_dir) / CLASSES_JSON, classes)


def read_manifest(raw_dir: str | Path):
    """``manifest.csv`` of ``raw_dir`` as a pandas DataFrame, with its columns checked."""
    import pandas as pd

    path = Path(raw_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found: run the download stage first")
    frame = pd.read_csv(path, dtype={"image": str, "class_name": str, "official_split": str},
                        keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


def read_classes(raw_dir: str | Path) -> dict[str, Any]:
    """``classes.json`` of ``raw_dir``: class_names, official_classes, source."""
    path = Path(raw_dir) / CLASSES_JSON
    if not path.is_file():
        raise DataError(f"{path} not found: run the download stage first")
    return read_json(path)
