"""Detect and read a local copy of Stanford Cars, whatever its layout; the source is never modified.

Accepted layouts of ``data.path`` (tried in this order):

1. **torchvision** ``stanford_cars`` folder: ``cars_train/ cars_test/ devkit/*.mat
   cars_test_annos_withlabels.mat``, or its parent holding ``stanford_cars/``. Common repackagings are
   tolerated: images nested one level (``cars_train/cars_train/``), the devkit as ``car_devkit/devkit/``, and
   ``cars_test_annos_withlabels.mat`` inside ``devkit/``.
2. **archives**: a folder holding the official ``cars_train.tgz``, ``cars_test.tgz``, ``car_devkit.tgz`` and
   ``cars_test_annos_withlabels.mat``; the archives are extracted safely into a temporary folder.
3. **class folders** (Kaggle): ``train/<class name>/*.jpg`` and ``test/<class name>/*.jpg``, possibly nested
   up to two levels (``car_data/car_data/train``). There are no boxes (box = whole image, with a warning),
   and ``official_class`` is the 1-based rank of the class name among all class folders, sorted.

Readers return a :class:`Source`: the official class names and one :class:`SourceImage` per annotation,
in official order (train rows, then test rows). Checking the images themselves is :mod:`carbench.manifest`'s job.
"""
from __future__ import annotations

import contextlib
import shutil
import tarfile
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional

from .errors import DataError
from .matfiles import read_annotations, read_class_names

SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TEST_LABELS = "cars_test_annos_withlabels.mat"
ARCHIVES = {"train": "cars_train.tgz", "test": "cars_test.tgz", "devkit": "car_devkit.tgz"}
#: How deep below data.path the Kaggle class-folder layout may sit (car_data/car_data/train = 2).
MAX_CLASS_FOLDER_NESTING = 2


class DataWarning(UserWarning):
    """Usable but imperfect data (no boxes, classes missing from a split, skipped images)."""


@dataclass(frozen=True)
class SourceImage:
    """One annotated image of a source.

    ``box``: official 1-based inclusive ``(x1, y1, x2, y2)``, or None for "the whole image";
    ``official_class``: 1-based; ``origin``: where the annotation came from, for error messages.
    """

    split: str
    fname: str
    path: Path
    official_class: int
    box: Optional[tuple[int, int, int, int]]
    origin: str

    @property
    def image(self) -> str:
        """The image's relative path in torchvision's layout, e.g. ``cars_train/00001.jpg``."""
        return f"cars_{self.split}/{self.fname}"


@dataclass
class Source:
    """A readable dataset: ``class_names[k - 1]`` names official class k."""

    kind: str
    root: Path
    class_names: list[str]
    images: list[SourceImage] = field(default_factory=list)


# ----------------------------------------------------------------------------- torchvision layout
@dataclass(frozen=True)
class TorchvisionFiles:
    """The resolved paths of a torchvision-style folder."""

    root: Path
    images: dict[str, Path]
    meta: Path
    train_annos: Path
    test_labels: Path


def _first_dir(*candidates: Path) -> Optional[Path]:
    return next((c for c in candidates if c.is_dir()), None)


def _image_dir(root: Path, split: str) -> Optional[Path]:
    """``cars_<split>/``, or ``cars_<split>/cars_<split>/`` when a repackaging nested it."""
    outer = root / f"cars_{split}"
    inner = outer / f"cars_{split}"
    return _first_dir(inner, outer)


def find_torchvision(root: Path) -> Optional[TorchvisionFiles]:
    """Resolve a torchvision-style folder at ``root`` (or ``root/stanford_cars``); None if it is not one."""
    for base in (root, root / "stanford_cars"):
        train, devkit = _image_dir(base, "train"), _first_dir(base / "devkit", base / "car_devkit" / "devkit")
        if train is None or devkit is None:
            continue
        test = _image_dir(base, "test") or base / "cars_test"
        labels = next((p for p in (base / TEST_LABELS, devkit / TEST_LABELS) if p.is_file()), base / TEST_LABELS)
        return TorchvisionFiles(root=base, images={"train": train, "test": test}, meta=devkit / "cars_meta.mat",
                                train_annos=devkit / "cars_train_annos.mat", test_labels=labels)
    return None


def read_torchvision(files: TorchvisionFiles, kind: str = "torchvision") -> Source:
    """Read the devkit ``.mat`` files of a torchvision-style folder into a :class:`Source`."""
    for required in (files.meta, files.train_annos, files.test_labels):
        if not required.is_file():
            raise DataError(f"{files.root} looks like torchvision's stanford_cars layout but {required} is missing")
    if not files.images["test"].is_dir():
        raise DataError(f"{files.root} looks like torchvision's stanford_cars layout but has no cars_test/ folder")
    source = Source(kind=kind, root=files.root, class_names=read_class_names(files.meta))
    for split, mat in (("train", files.train_annos), ("test", files.test_labels)):
        for ann in read_annotations(mat, require_class=True):
            origin = f"{mat} row {ann.row}"
            fname = _plain_file_name(ann.fname, origin)
            source.images.append(SourceImage(split=split, fname=fname, path=files.images[split] / fname,
                                             official_class=int(ann.official_class or 0), box=ann.box,
                                             origin=origin))
    return source


def _plain_file_name(fname: str, origin: str) -> str:
    """Reject annotation file names that would leave the image folder (``../x.jpg``, ``/etc/x``)."""
    posix = PurePosixPath(fname.replace("\\", "/"))
    if len(posix.parts) != 1 or posix.name in ("", ".", ".."):
        raise DataError(f"{origin}: fname {fname!r} must be a plain file name inside the image folder")
    return posix.name


# ----------------------------------------------------------------------------- Kaggle class folders
def find_class_folders(root: Path) -> Optional[Path]:
    """The folder holding ``train/`` and ``test/`` class folders at or below ``root``; None if absent."""
    level = [root]
    for _ in range(MAX_CLASS_FOLDER_NESTING + 1):
        for folder in level:
            if all(_has_subdirs(folder / split) for split in SPLITS):
                return folder
        level = [d for folder in level for d in sorted(folder.iterdir()) if d.is_dir()]
    return None


def _has_subdirs(folder: Path) -> bool:
    return folder.is_dir() and any(d.is_dir() for d in folder.iterdir())


def read_class_folders(root: Path) -> Source:
    """Read ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``; boxes are None (the whole image)."""
    names = sorted({d.name for split in SPLITS for d in (root / split).iterdir() if d.is_dir()})
    source = Source(kind="class_folders", root=root, class_names=names)
    rank = {name: i + 1 for i, name in enumerate(names)}
    for split in SPLITS:
        for class_dir in sorted(d for d in (root / split).iterdir() if d.is_dir()):
            for path in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                source.images.append(SourceImage(split=split, fname=path.name, path=path,
                                                 official_class=rank[class_dir.name], box=None, origin=str(path)))
    warnings.warn(f"{root}: the class-folder layout has no bounding boxes; every box is the whole image",
                  DataWarning, stacklevel=2)
    return source


# ----------------------------------------------------------------------------- archives
def find_archives(root: Path) -> Optional[dict[str, Path]]:
    """The official archives in ``root`` (all of them, else a DataError naming the missing); None if none."""
    wanted = {**{k: root / name for k, name in ARCHIVES.items()}, "labels": root / TEST_LABELS}
    present = {k for k, p in wanted.items() if p.is_file()}
    if not present & set(ARCHIVES):
        return None
    missing = [wanted[k].name for k in wanted if k not in present]
    if missing:
        raise DataError(f"{root} holds some official archives but not {', '.join(missing)}")
    return wanted


def _check_member(member: tarfile.TarInfo, dest: Path, archive: Path) -> None:
    """Refuse members that would land outside ``dest``: absolute, ``..``, links escaping, devices."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or member.name.startswith(("\\", "/")):
        raise DataError(f"{archive}: member {member.name!r} would be extracted outside the target folder")
    if member.isdev() or member.isfifo():
        raise DataError(f"{archive}: member {member.name!r} is a device or FIFO, refusing to extract it")
    if member.issym() or member.islnk():
        base = dest if member.islnk() else (dest / name).parent
        target = (base / member.linkname).resolve()
        if PurePosixPath(member.linkname).is_absolute() or not target.is_relative_to(dest.resolve()):
            raise DataError(f"{archive}: link {member.name!r} -> {member.linkname!r} escapes the target folder")


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive into ``dest`` after checking every member (see :func:`_check_member`)."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, dest, archive)
            # The 'data' filter re-checks the same rules inside tarfile (defence in depth).
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: cannot extract ({exc})") from None


def extract_archives(archives: dict[str, Path], dest: Path) -> TorchvisionFiles:
    """Extract the official archives into ``dest`` and return the torchvision-style files inside."""
    for key in ARCHIVES:
        safe_extract(archives[key], dest)
    shutil.copyfile(archives["labels"], dest / TEST_LABELS)
    files = find_torchvision(dest)
    if files is None:
        raise DataError(f"the archives in {archives['train'].parent} do not contain cars_train/ and devkit/")
    return files


# ----------------------------------------------------------------------------- entry point
def describe_layouts() -> str:
    """One line per accepted layout, for error messages."""
    return ("torchvision's stanford_cars folder (cars_train/ cars_test/ devkit/*.mat "
            "cars_test_annos_withlabels.mat, or its parent), a folder holding the official archives "
            f"({', '.join(ARCHIVES.values())}, {TEST_LABELS}), or Kaggle class folders "
            "(train/<class name>/*.jpg and test/<class name>/*.jpg)")


@contextlib.contextmanager
def open_local(path: str | Path, scratch_dir: str | Path) -> Iterator[Source]:
    """Detect the layout of ``path`` and yield its :class:`Source`.

    Archives are extracted into a temporary folder under ``scratch_dir``, removed on exit, so the yielded
    image paths are valid only inside the ``with`` block.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"data.path {root} is not a directory")
    files = find_torchvision(root)
    if files is not None:
        yield read_torchvision(files)
        return
    archives = find_archives(root)
    if archives is not None:
        Path(scratch_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="extract-", dir=scratch_dir) as tmp:
            yield read_torchvision(extract_archives(archives, Path(tmp)), kind="archives")
        return
    folders = find_class_folders(root)
    if folders is not None:
        yield read_class_folders(folders)
        return
    found = ", ".join(sorted(p.name for p in root.iterdir())[:12]) or "nothing"
    raise DataError(f"{root} matches no known layout (found: {found}); expected {describe_layouts()}")
