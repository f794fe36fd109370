"""Validate a :class:`~carbench.download.layouts.Source` and pack it into ``data/raw`` (see docs/ARCHITECTURE.md §1).

``data/raw`` holds three files instead of 16k small ones (their format and its readers and writers:
:mod:`carbench.data.raw`); the image bytes are concatenated, never re-encoded. Only image *headers* are read here
(width/height); decoding happens once, in the crop stage.

Checks, each a :class:`DataError` naming the file (and the annotation row), or — with
``data.skip_bad_images`` — a skipped image listed in the metrics: class out of range, missing or unreadable file,
a header Pillow refuses for any reason (zero bytes, no known format, damaged header, too many pixels, no pixels:
:mod:`carbench.data.images`), empty box (x1 > x2 or y1 > y2), box entirely outside the image. A box that
only overhangs the image is clamped to it (listed under ``boxes_clamped``). Duplicate image names are
always an error: which label is right cannot be guessed.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional

from ..core.errors import DataError, DataWarning, ImageError
from .fingerprint import canonical_order
from ..core.io import atomic_dir
from ..data.images import read_header
from .layouts import Source, SourceImage
from ..data.raw import IMAGES_BIN, write_classes, write_manifest

OFFICIAL_NUM_CLASSES = 196
#: The way forward named by every image the download refuses.
SKIP_HINT = "data.skip_bad_images: true to skip bad images"


@dataclass(frozen=True)
class PackedImage:
    """A validated image: where its bytes went in ``images.bin`` and its (clamped) 1-based box."""

    source: SourceImage
    box: tuple[int, int, int, int]
    width: int
    height: int
    offset: int
    nbytes: int


class BadImage(Exception):
    """An image that fails a check; turned into a DataError or a skip by the caller."""


def check_box(box: Optional[tuple[int, int, int, int]], width: int, height: int) -> tuple[tuple[int, ...], bool]:
    """Validate a 1-based inclusive box against a ``width`` x ``height`` image.

    Returns ``(box clamped to 1..width / 1..height, whether it was clamped)``; None means the whole image.
    """
    if box is None:
        return (1, 1, width, height), False
    x1, y1, x2, y2 = box
    if x1 > x2 or y1 > y2:
        raise BadImage(f"empty box (x1, y1, x2, y2) = {box}: x1 > x2 or y1 > y2")
    if x1 > width or y1 > height or x2 < 1 or y2 < 1:
        raise BadImage(f"box {box} lies outside the {width}x{height} image")
    clamped = (max(x1, 1), max(y1, 1), min(x2, width), min(y2, height))
    return clamped, clamped != tuple(box)


def check_duplicates(images: list[SourceImage]) -> None:
    """Two annotations for one image path: a DataError naming both."""
    seen: dict[str, SourceImage] = {}
    for item in images:
        if item.image in seen:
            raise DataError(f"duplicate file name {item.image}: {seen[item.image].origin} and {item.origin}")
        seen[item.image] = item


def _pack_one(item: SourceImage, out: BinaryIO, offset: int, num_names: int,
              extra: int = 0) -> tuple[PackedImage, bool, str]:
    """Check one image and append its bytes to ``out``; returns (packed image, box clamped?, format)."""
    limit = min(num_names - extra, OFFICIAL_NUM_CLASSES) + extra   # a user's own classes come after 196
    if not 1 <= item.official_class <= limit:
        raise BadImage(f"class {item.official_class} is out of range 1..{limit}")
    if not item.path.is_file():
        raise BadImage(f"image file not found: {item.path}")
    try:
        data = item.path.read_bytes()
    except OSError as exc:     # no permission, an I/O error of the disk
        raise BadImage(f"cannot read the file: {exc.strerror or exc}") from None
    try:
        width, height, fmt = read_header(data)   # the format comes from the content, not the file name
    except ImageError as exc:
        raise BadImage(f"not a readable image: {exc}") from None
    box, clamped = check_box(item.box, width, height)
    out.write(data)
    return PackedImage(item, box, width, height, offset, len(data)), clamped, fmt  # type: ignore[arg-type]


def pack_images(source: Source, out_path: Path, skip_bad: bool) -> tuple[list[PackedImage], dict[str, Any]]:
    """Validate every image of ``source`` and concatenate their bytes into ``out_path``.

    Returns the packed images (file order) and a report: ``skipped`` (list of {image, reason}),
    ``boxes_clamped`` (image names) and ``formats`` (count per decoded format).
    """
    packed: list[PackedImage] = []
    report: dict[str, Any] = {"skipped": [], "boxes_clamped": [], "formats": {}}
    offset = 0
    with open(out_path, "wb") as out:
        for item in source.images:
            try:
                image, clamped, fmt = _pack_one(item, out, offset, len(source.class_names), source.extra)
            except BadImage as exc:
                if not skip_bad:
                    raise DataError(f"{item.origin}: {exc} (image {item.path}); fix or remove it, or set "
                                    f"{SKIP_HINT}") from None
                report["skipped"].append({"image": item.image, "file": str(item.path), "reason": str(exc)})
                continue
            packed.append(image)
            offset += image.nbytes
            report["formats"][fmt] = report["formats"].get(fmt, 0) + 1
            if clamped:
                report["boxes_clamped"].append(item.image)
    return packed, report


def manifest_rows(packed: list[PackedImage], class_names: list[str]) -> tuple[list[list[Any]], list[int]]:
    """The rows of ``manifest.csv`` (:data:`carbench.data.raw.MANIFEST_COLUMNS` order); class ids are contiguous
    over the official classes that occur. Returns (rows, the official class numbers in class-id order)."""
    officials = sorted({p.source.official_class for p in packed})
    class_id = {official: i for i, official in enumerate(officials)}
    rows = []
    for p in packed:
        c = p.source.official_class
        rows.append([p.source.image, class_id[c], c, class_names[c - 1], *p.box, p.source.split, p.width, p.height,
                     p.offset, p.nbytes])
    return rows, officials


def build_raw(source: Source, out_dir: str | Path, skip_bad: bool) -> dict[str, Any]:
    """Check and pack ``source`` into ``out_dir`` (atomically: on error nothing is left behind).

    Images are packed in the canonical order (:func:`carbench.download.fingerprint.canonical_order`), so every
    packaging of the same photos gives the same rows. Returns the metrics for ``metrics/data.json``
    (counts per split, classes, skipped, ...).
    """
    check_duplicates(source.images)
    ordered = Source(kind=source.kind, root=source.root, class_names=source.class_names,
                     images=canonical_order(source.images), boxes=source.boxes, extra=source.extra)
    with atomic_dir(out_dir) as tmp:
        packed, report = pack_images(ordered, tmp / IMAGES_BIN, skip_bad)
        if not packed:
            raise DataError(f"{source.root}: no usable images (skipped {len(report['skipped'])})")
        rows, officials = manifest_rows(packed, source.class_names)
        write_manifest(tmp, rows)
        names = [source.class_names[c - 1] for c in officials]
        extra = [n for c, n in zip(officials, names) if c > len(source.class_names) - source.extra]
        write_classes(tmp, {"class_names": names, "official_classes": officials, "source": source.kind,
                            **({"extra_classes": extra} if extra else {})})
    if report["skipped"]:
        warnings.warn(f"skipped {len(report['skipped'])} bad image(s); see metrics", DataWarning, stacklevel=2)
    counts = {split: sum(p.source.split == split for p in packed) for split in ("train", "test")}
    return {"layout": source.kind, "boxes": source.boxes, "counts": {**counts, "total": len(packed)},
            "num_classes": len(officials),
            "bytes": sum(p.nbytes for p in packed), "num_skipped": len(report["skipped"]), **report,
            "num_boxes_clamped": len(report["boxes_clamped"])}
