"""The crop store ``data/crops`` (ARCHITECTURE.md §3): its one owner, writer and reader.

Layout: ``{train,val,test}.npy`` uint8 ``(N, S, S, 3)`` RGB crops; ``{split}.csv`` with ``image`` and
``class_id`` row-aligned to the array; ``meta.json`` with ``size, margin, keep_aspect, class_names,
num_classes, counts`` and, when known, ``source`` and (class-disjoint protocol) ``train_classes``
(:class:`StoreMeta`). Arrays are memory-mapped by default,
so opening a split costs nothing and ``images[i]`` reads one crop from disk.

Writers: the crop stage allocates each split (:func:`allocate_split`), fills it from its workers, compacts
away skipped images (:func:`compact_split`) and writes the index and meta (:func:`write_index`,
:func:`write_meta`); a store held in memory (benchmarks, tests) is written whole by :func:`write_store`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..config import SPLITS
from ..core.errors import DataError

META_FILE = "meta.json"
META_KEYS = ("size", "margin", "keep_aspect", "class_names", "num_classes", "counts")
INDEX_COLUMNS = ("image", "class_id")
#: The evaluation protocols (:attr:`StoreMeta.protocol`): the test classes are the trained ones, or none of them.
CLASSIFICATION, DISJOINT = "classification", "disjoint"
#: Rows per block when compacting a split after skipped images.
COPY_BLOCK_ROWS = 256


@dataclass(frozen=True)
class StoreMeta:
    """``meta.json``: crop side, crop settings, class names (index = class id) and rows per split."""

    size: int
    margin: float
    keep_aspect: bool
    class_names: tuple[str, ...]
    num_classes: int
    counts: dict[str, int]
    #: Where the images came from (``data/raw/classes.json``'s ``source``, e.g. ``synthetic``); "" when unknown,
    #: as in stores written before it was recorded. Training copies it into the checkpoint.
    source: str = ""
    #: Under the class-disjoint protocol (``split.strategy: disjoint``): how many leading class ids form the train
    #: half, the classes a model learns; 0 = every class is trained and tested (the classification protocol).
    train_classes: int = 0

    def to_json(self) -> dict[str, Any]:
        out = {"size": self.size, "margin": self.margin, "keep_aspect": self.keep_aspect,
               "class_names": list(self.class_names), "num_classes": self.num_classes, "counts": dict(self.counts)}
        out = {**out, "source": self.source} if self.source else out
        return {**out, "train_classes": self.train_classes} if self.train_classes else out

    @property
    def disjoint(self) -> bool:
        """The test classes are none of the trained ones (``split.strategy: disjoint``)."""
        return self.train_classes > 0

    @property
    def protocol(self) -> str:
        """``disjoint`` (retrieval papers: test classes unseen) or ``classification`` (test classes trained)."""
        return DISJOINT if self.disjoint else CLASSIFICATION

    def trained(self) -> StoreMeta:
        """The store as training sees it: under the disjoint protocol only the train half's classes (ids
        0..train_classes-1 keep their ids, so labels need no mapping); otherwise the store itself."""
        if not self.disjoint:
            return self
        names = self.class_names[:self.train_classes]
        return replace(self, class_names=names, num_classes=len(names), train_classes=0)


def store_files(splits: Sequence[str] = SPLITS) -> tuple[str, ...]:
    """The file names of a store holding ``splits`` (meta first, then each split's array and index)."""
    return (META_FILE,) + tuple(f"{split}.{ext}" for split in splits for ext in ("npy", "csv"))


def split_paths(store_dir: str | Path, split: str) -> tuple[Path, Path]:
    """(array ``{split}.npy``, index ``{split}.csv``) of one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(store_dir) / f"{split}.npy", Path(store_dir) / f"{split}.csv"


def allocate_split(path: Path, count: int, size: int) -> None:
    """Create ``path`` as a zero-filled uint8 ``.npy`` of shape ``(count, size, size, 3)`` (filled in place)."""
    if count == 0:
        np.save(path, np.zeros((0, size, size, 3), dtype=np.uint8))
        return
    store = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, size, size, 3))
    del store  # flushed and closed; writers reopen it in r+ mode


def compact_split(path: Path, keep: np.ndarray) -> None:
    """Rewrite the split array at ``path`` with only the rows where the boolean ``keep`` is true."""
    old = np.load(path, mmap_mode="r")
    kept = np.flatnonzero(keep)
    tmp = path.with_name(path.stem + ".compact.npy")
    if len(kept) == 0:
        np.save(tmp, np.zeros((0,) + old.shape[1:], dtype=np.uint8))
    else:
        new = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(kept),) + old.shape[1:])
        for start in range(0, len(kept), COPY_BLOCK_ROWS):
            block = kept[start:start + COPY_BLOCK_ROWS]
            new[start:start + len(block)] = old[block]
        new.flush()
        del new
    del old
    tmp.replace(path)


def write_index(store_dir: str | Path, split: str, names: Sequence[str], labels: Sequence[int]) -> None:
    """``{split}.csv``: the image name and class id of each row of the split's array."""
    import csv

    if len(names) != len(labels):
        raise ValueError(f"{len(names)} image names but {len(labels)} labels")
    with open(split_paths(store_dir, split)[1], "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        writer.writerows((name, int(label)) for name, label in zip(names, labels))


def write_meta(store_dir: str | Path, meta: StoreMeta) -> None:
    """``meta.json`` (sorted, indented: byte-identical on reruns)."""
    from ..core.io import write_json

    write_json(Path(store_dir) / META_FILE, meta.to_json())


def write_store(store_dir: str | Path, splits: Mapping[str, tuple[np.ndarray, Sequence[str], Sequence[int]]],
                class_names: Sequence[str], margin: float = 0.0, keep_aspect: bool = False) -> StoreMeta:
    """Write a whole store held in memory: ``splits[split] = (images (N, S, S, 3) uint8, names, labels)``."""
    store_dir = Path(store_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    sizes = {images.shape[1] for images, _, _ in splits.values()}
    if len(sizes) != 1:
        raise ValueError(f"every split needs the same crop size, got {sorted(sizes)}")
    for split, (images, names, labels) in splits.items():
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (images.shape[1], images.shape[1], 3):
            raise ValueError(f"{split}: expected uint8 (N, S, S, 3), got {images.dtype} {images.shape}")
        np.save(split_paths(store_dir, split)[0], images)
        write_index(store_dir, split, names, labels)
    meta = StoreMeta(size=sizes.pop(), margin=margin, keep_aspect=keep_aspect, class_names=tuple(class_names),
                     num_classes=len(class_names), counts={split: len(v[2]) for split, v in splits.items()})
    write_meta(store_dir, meta)
    return meta


@dataclass(frozen=True)
class CropSplit:
    """One split of the store: ``images`` (N, S, S, 3) uint8, ``labels`` (N,) int64 class ids,
    ``names`` the N image names (e.g. ``cars_train/00001.jpg``), row-aligned."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def load_meta(store_dir: str | Path) -> StoreMeta:
    """``meta.json`` of a crop store, with its keys and their types checked."""
    path = Path(store_dir) / META_FILE
    if not path.is_file():
        raise DataError(f"{path} not found: run the crop stage first")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    missing = [k for k in META_KEYS if k not in raw]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}")
    try:
        meta = StoreMeta(size=int(raw["size"]), margin=float(raw["margin"]), keep_aspect=bool(raw["keep_aspect"]),
                         class_names=tuple(str(n) for n in raw["class_names"]), num_classes=int(raw["num_classes"]),
                         counts={str(k): int(v) for k, v in dict(raw["counts"]).items()},
                         source=str(raw.get("source", "")), train_classes=int(raw.get("train_classes", 0)))
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: a value has the wrong type ({exc})") from None
    if meta.num_classes != len(meta.class_names):
        raise DataError(f"{path}: num_classes {meta.num_classes} but {len(meta.class_names)} class names")
    if not 0 <= meta.train_classes < max(meta.num_classes, 1):
        raise DataError(f"{path}: train_classes {meta.train_classes} is not below num_classes {meta.num_classes}")
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
    size = meta.size
    if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
        raise DataError(f"{array_path}: expected uint8 (N, {size}, {size}, 3), got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise DataError(f"{array_path} has {len(images)} rows but {split}.csv has {len(labels)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= meta.num_classes):
        raise DataError(f"{store_dir / (split + '.csv')}: class_id outside 0..{meta.num_classes - 1}")
    return CropSplit(images=images, labels=labels, names=names)
