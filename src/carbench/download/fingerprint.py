"""The dataset fingerprint: which photos a source holds, independent of file names and packaging.

Mirrors repackage and rename the same photos (``car_ims/000001.jpg`` in the all-in-one packaging,
``cars_train/00001.jpg`` in the split one), so neither archive checksums nor file names can tell whether a
route delivered Stanford Cars. The fingerprint can:

- one line per image, ``f"{split},{class},{x1},{y1},{x2},{y2}"`` (split ``train`` or ``test``, the 1-based
  class, the box as stored in the ``.mat`` files); the lines sorted as strings, each ended by ``\\n``; the
  sha256 hex digest of their UTF-8 bytes (``sha256``), plus the image count per split;
- the same over ``f"{split},{class}"`` only (``labels_sha256``), the check that remains for a route without
  boxes (the Hugging Face parquet copies).

Both official packagings give the same fingerprint (a test computes it from the devkit files). The
reference lines themselves ship as ``src/carbench/resources/stanford_cars_annotations.csv.gz`` so that a
mismatch can name what differs (a wrong label, a missing image) instead of only saying "hash differs".

This module also fixes the **canonical image order** every route is packed in (sorted by the fingerprint
line), so that all routes give the same ``data/raw`` rows, the same split and identical crops.
"""
from __future__ import annotations

import gzip
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .layouts import SPLITS, SourceImage

#: How many differing lines a rejection message names (the rest are counted).
MAX_NAMED = 5


def image_line(item: SourceImage) -> str:
    """The fingerprint line of one image (``box=None``, "the whole image", has no box part)."""
    if item.box is None:
        return labels_line(item)
    return f"{item.split},{item.official_class}," + ",".join(str(v) for v in item.box)


def labels_line(item: SourceImage) -> str:
    return f"{item.split},{item.official_class}"


def digest(lines: Iterable[str]) -> str:
    """sha256 hex of the sorted lines, each ended by a newline."""
    sha = hashlib.sha256()
    for line in sorted(lines):
        sha.update(f"{line}\n".encode("utf-8"))
    return sha.hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """What a source holds: ``sha256`` (None when it has no boxes), ``labels_sha256`` and counts per split."""

    sha256: Optional[str]
    labels_sha256: str
    counts: dict[str, int]

    def as_dict(self) -> dict:
        return {"sha256": self.sha256 or "none", "labels_sha256": self.labels_sha256, **self.counts}


def fingerprint(images: Sequence[SourceImage]) -> Fingerprint:
    """The fingerprint of a source's annotations (file names and image bytes play no part)."""
    has_boxes = all(item.box is not None for item in images)
    return Fingerprint(sha256=digest(image_line(i) for i in images) if has_boxes else None,
                       labels_sha256=digest(labels_line(i) for i in images),
                       counts={split: sum(i.split == split for i in images) for split in SPLITS})


def canonical_order(images: Sequence[SourceImage]) -> list[SourceImage]:
    """``images`` sorted by (split, class, box), the same for every packaging of the same photos.

    Images whose lines tie (Stanford Cars has one such pair) are ordered by the sha256 of their bytes, so the
    order does not depend on file names either.
    """
    def key(item: SourceImage) -> tuple:
        return (SPLITS.index(item.split), item.official_class, item.box or (0, 0, 0, 0))

    counts = Counter(key(i) for i in images)
    def content(item: SourceImage) -> str:
        if counts[key(item)] < 2 or not item.path.is_file():
            return ""
        return hashlib.sha256(item.path.read_bytes()).hexdigest()

    return sorted(images, key=lambda i: (key(i), content(i)))


# ----------------------------------------------------------------------------- reference lines
def write_reference(path: str | Path, lines: Iterable[str]) -> None:
    """Write sorted fingerprint lines as gzip text (mtime 0, so the file is byte-reproducible)."""
    data = "".join(f"{line}\n" for line in sorted(lines)).encode("utf-8")
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as out:
        out.write(data)


def read_reference(path: str | Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]


# ----------------------------------------------------------------------------- comparison
def differences(images: Sequence[SourceImage], expected_sha256: str, expected_labels_sha256: str,
                expected_counts: dict[str, int], reference: Optional[Sequence[str]] = None) -> list[str]:
    """What differs between ``images`` and the expected dataset; empty when they match.

    With the reference lines, each difference names the image and the line; without them only counts and
    hashes can be compared.
    """
    found = fingerprint(images)
    problems = []
    for split in SPLITS:
        if found.counts[split] != expected_counts[split]:
            problems.append(f"{found.counts[split]} {split} images where the dataset has {expected_counts[split]}")
    boxes = found.sha256 is not None
    if (found.sha256 if boxes else found.labels_sha256) == (expected_sha256 if boxes else expected_labels_sha256):
        return problems
    if reference is not None:
        problems.extend(_line_differences(images, reference, boxes))
    if not problems or reference is None:
        kind = "fingerprint" if boxes else "labels fingerprint (no boxes in this source)"
        problems.append(f"{kind} {found.sha256 if boxes else found.labels_sha256} differs from the expected "
                        f"{expected_sha256 if boxes else expected_labels_sha256}")
    return problems


def _line_differences(images: Sequence[SourceImage], reference: Sequence[str], boxes: bool) -> list[str]:
    """Name the images whose annotation is not in the reference, and the reference lines nobody matched."""
    line_of = image_line if boxes else labels_line
    expected = Counter(reference if boxes else (",".join(r.split(",")[:2]) for r in reference))
    got = Counter(line_of(i) for i in images)
    extra = got - expected
    missing = expected - got
    problems = []
    named = 0
    wrong_label = {}
    for item in images:
        line = line_of(item)
        if extra[line] <= 0:
            continue
        extra[line] -= 1
        # a wrong label keeps split and box: look for the reference line with the same box and another class
        match = next((m for m in missing if missing[m] > 0 and boxes
                      and m.split(",")[0] == item.split and m.split(",")[2:] == line.split(",")[2:]), None)
        if match is not None:
            missing[match] -= 1
            wrong_label[item.image] = (item.official_class, int(match.split(",")[1]))
        if named < MAX_NAMED:
            if match is not None:
                problems.append(f"{item.image}: class {item.official_class} where the dataset has class "
                                f"{match.split(',')[1]} for this {item.split} image and box")
            else:
                problems.append(f"{item.image}: annotation ({line}) is not in the dataset")
        named += 1
    missing_lines = sorted(missing.elements())
    for line in missing_lines[:MAX_NAMED]:
        problems.append(f"missing: the {line.split(',')[0]} image with class/box ({line}) is not in this source")
    rest = max(0, named - MAX_NAMED) + max(0, len(missing_lines) - MAX_NAMED)
    if rest:
        problems.append(f"... and {rest} more differences")
    return problems
