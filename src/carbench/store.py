"""Reader API of the crop store ``data/crops`` (ARCHITECTURE.md §3).

Layout: ``{train,val,test}.npy`` uint8 ``(N, S, S, 3)`` RGB crops; ``{split}.csv`` with ``image`` and
``class_id`` row-aligned to the array; ``meta.json`` with ``size, margin, keep_aspect, class_names,
num_classes, counts``. Arrays are memory-mapped by default, so opening a split costs nothing and
``images[i]`` reads one crop from disk.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

SPLITS = ("train", "val", "test")
META_KEYS = ("size", "margin", "keep_aspect", "class_names", "num_classes", "counts")


@dataclass(frozen=True)
class CropSplit:
    """One split of the store: ``images`` (N, S, S, 3) uint8, ``labels`` (N,) int64 class ids,
    ``names`` the N image names (e.g. ``cars_train/00001.jpg``), row-aligned."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def load_meta(store_dir: str | Path) -> dict[str, Any]:
    """``meta.json`` of a crop store, with its keys checked."""
    path = Path(store_dir) / "meta.json"
    if not path.is_file():
        raise DataError(f"{path} not found: run the crop stage first")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}")
    return meta


def _read_index(path: Path) -> tuple[list[str], np.ndarray]:
    """The ``image`` and ``class_id`` columns of a split's CSV."""
    import csv

    if not path.is_file():
        raise DataError(f"{path} not found: run the crop stage first")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"image", "class_id"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected columns image, class_id")
        rows = [(r["image"], r["class_id"]) for r in reader]
    try:
        labels = np.array([int(c) for _, c in rows], dtype=np.int64)
    except ValueError as exc:
        raise DataError(f"{path}: class_id is not an integer ({exc})") from None
    return [name for name, _ in rows], labels


def load_split(store_dir: str | Path, split: str, mmap: bool = True) -> CropSplit:
    """One split of a crop store; ``mmap=False`` reads the whole array into memory.

    Raises DataError when a file is missing or the array, index and meta disagree.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    store_dir = Path(store_dir)
    meta = load_meta(store_dir)
    array_path = store_dir / f"{split}.npy"
    if not array_path.is_file():
        raise DataError(f"{array_path} not found: run the crop stage first")
    images = np.load(array_path, mmap_mode="r" if mmap else None)
    names, labels = _read_index(store_dir / f"{split}.csv")
    size = int(meta["size"])
    if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
        raise DataError(f"{array_path}: expected uint8 (N, {size}, {size}, 3), got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise DataError(f"{array_path} has {len(images)} rows but {split}.csv has {len(labels)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= int(meta["num_classes"])):
        raise DataError(f"{store_dir / (split + '.csv')}: class_id outside 0..{int(meta['num_classes']) - 1}")
    return CropSplit(images=images, labels=labels, names=names)
