"""A user's own classes (``data.extra``): a folder of ``<class name>/*.jpg`` merged into the dataset.

Layout of ``data.extra`` (relative to the working directory)::

    BIG_TRUCKS/0001.jpg  BIG_TRUCKS/0002.jpg ...      one sub-folder per new class (its name = class name)
    boxes.csv                                         optional: image,x1,y1,x2,y2 (image = BIG_TRUCKS/0001.jpg,
                                                      official 1-based inclusive box); unlisted: whole image

The new classes get official numbers after the source's own (``len(class_names) + 1, ...``: 197.. on Stanford
Cars, 13.. on the 12-class demo, 99.. on dev98), in sorted folder-name order, and their images are named
``extra/<class>/<file>`` in ``data/raw``. They are merged *after* the dataset fingerprint was checked
(``carbench.download.fingerprint`` sees the official images only) and are listed in ``metrics/data.json: extra``.

Extra images have no official split. Rule (deterministic, documented in docs/data.md): per class, the
images sorted by name are shuffled by ``numpy.random.default_rng([base.seed, official class])`` and the first
``round(test_share * n)`` (at least 1, at most n - 1, for n >= 2) become ``test``, the rest ``train``, where
``test_share`` is the source's own test / (train + test) ratio (0.497 on Stanford Cars). The split stage then
treats them like official images (``official``: that test set; ``pooled`` / ``kfold``: pooled with the rest).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DataError
from .layouts import IMAGE_SUFFIXES, Source, SourceImage

BOXES_CSV = "boxes.csv"
EXTRA_PREFIX = "extra"


def _read_boxes(path: Path) -> dict[str, tuple[int, int, int, int]]:
    """``boxes.csv`` as ``{"<class>/<file>": (x1, y1, x2, y2)}``; a bad row is a DataError naming it."""
    out: dict[str, tuple[int, int, int, int]] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        need = {"image", "x1", "y1", "x2", "y2"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DataError(f"{path}: needs columns image,x1,y1,x2,y2 (got {reader.fieldnames})")
        for row_no, row in enumerate(reader, start=2):
            try:
                box = tuple(int(row[k]) for k in ("x1", "y1", "x2", "y2"))
            except (TypeError, ValueError):
                raise DataError(f"{path} line {row_no}: box values must be integers, got {row}") from None
            out[row["image"].replace("\\", "/")] = box  # type: ignore[assignment]
    return out


def source_test_share(source: Source) -> float:
    """The source's test / (train + test) ratio (0.5 when it has no images)."""
    total = len(source.images)
    return sum(i.split == "test" for i in source.images) / total if total else 0.5


def held_out(n: int, share: float) -> int:
    """``round(share * n)`` kept within 1..n-1 for n >= 2 (0 for a single image: it trains)."""
    if n < 2:
        return 0
    return min(max(int(round(share * n)), 1), n - 1)


def merge_extra(source: Source, folder: str | Path, seed: int) -> tuple[Source, dict[str, Any]]:
    """``source`` plus the classes of ``folder`` (a new :class:`Source`), and the metrics entry describing them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data.extra: {folder} is not a folder (expected <class name>/*.jpg sub-folders)")
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"data.extra: {folder} has no class sub-folders (expected <class name>/*.jpg)")
    boxes = _read_boxes(folder / BOXES_CSV) if (folder / BOXES_CSV).is_file() else {}
    clash = sorted({d.name for d in class_dirs} & set(source.class_names))
    if clash:
        raise DataError(f"data.extra: class folder(s) {clash} of {folder} name classes the dataset already has")
    share, first = source_test_share(source), len(source.class_names) + 1
    images, classes, used = list(source.images), [], set()
    for official, class_dir in enumerate(class_dirs, start=first):
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"data.extra: {class_dir} holds no image (.jpg/.jpeg/.png)")
        order = np.random.default_rng([seed, official]).permutation(len(files))
        test = set(order[:held_out(len(files), share)].tolist())
        for i, path in enumerate(files):
            rel = f"{class_dir.name}/{path.name}"
            used.add(rel)
            images.append(SourceImage(split="test" if i in test else "train", fname=path.name, path=path,
                                      official_class=official, box=boxes.get(rel),
                                      origin=f"data.extra {path}", name=f"{EXTRA_PREFIX}/{rel}"))
        classes.append({"name": class_dir.name, "official_class": official, "train": len(files) - len(test),
                        "test": len(test), "boxes": sum(f"{class_dir.name}/{p.name}" in boxes for p in files)})
    unknown = sorted(set(boxes) - used)
    if unknown:
        raise DataError(f"{folder / BOXES_CSV}: names image(s) not in the class folders: {unknown[:5]}")
    merged = Source(kind=source.kind, root=source.root, class_names=[*source.class_names,
                                                                     *(c["name"] for c in classes)],
                    images=images, boxes=source.boxes, extra=len(classes))
    return merged, {"path": str(folder), "test_share": round(share, 4), "classes": classes,
                    "images": sum(c["train"] + c["test"] for c in classes)}
