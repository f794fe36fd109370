"""Detect and read a copy of Stanford Cars, whatever its layout; the source is never modified.

Accepted layouts of a folder (tried in this order):

1. **torchvision** ``stanford_cars`` folder: ``cars_train/ cars_test/ devkit/*.mat
   cars_test_annos_withlabels.mat``. Common repackagings are tolerated: the folder one or two levels down
   (``stanford_cars/``, a Kaggle download's top folder), images nested one level (``cars_train/cars_train/``),
   the devkit as ``car_devkit/devkit/``, ``cars_test_annos_withlabels.mat`` inside ``devkit/`` or given
   separately (``test_labels``: the Kaggle copy whose devkit has no test labels).
2. **all-in-one**: ``car_ims/*.jpg`` + ``cars_annos.mat`` (box, class and a ``test`` flag for every image),
   also one or two levels down (the fast.ai ``stanford-cars.tgz`` unpacks into a folder).
3. **archives**: a folder holding archives (``.tgz``/``.tar``/``.zip``: the four official files, or
   ``car_ims.tgz`` + ``cars_annos.mat``, or one archive of either layout); they are extracted safely into a
   temporary folder (loose ``.mat`` files copied beside them) and read as 1. or 2.
4. **parquet** (Hugging Face): ``*.parquet`` files whose names start with ``train``/``test`` (also under
   ``data/``), columns ``image`` (``{bytes, path}``) and ``label`` (0-based); no boxes.
5. **class folders** (Kaggle): ``train/<class name>/*.jpg`` and ``test/<class name>/*.jpg``, possibly nested
   up to two levels (``car_data/car_data/train``); no boxes, and ``official_class`` is the 1-based rank of the
   class name among all class folders, sorted.

Layouts without boxes (4, 5) give box = None (the whole image), a :class:`DataWarning`, and
``Source.boxes == "none"``. Readers return a :class:`Source`: the official class names and one
:class:`SourceImage` per annotation. Checking the images themselves is :mod:`carbench.download.manifest`'s job.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Optional, TypeVar

from .archives import is_archive, safe_extract
from ..core.errors import DataError, DataWarning
from .matfiles import read_all_in_one, read_annotations, read_class_names

SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TEST_LABELS = "cars_test_annos_withlabels.mat"
ALL_IN_ONE = "cars_annos.mat"
ALL_IN_ONE_IMAGES = "car_ims"
ARCHIVES = {"train": "cars_train.tgz", "test": "cars_test.tgz", "devkit": "car_devkit.tgz"}
#: How deep below the given folder a layout may sit (car_data/car_data/train = 2).
MAX_NESTING = 2
T = TypeVar("T")


@dataclass(frozen=True)
class SourceImage:
    """One annotated image of a source.

    ``box``: official 1-based inclusive ``(x1, y1, x2, y2)``, or None for "the whole image";
    ``official_class``: 1-based; ``origin``: where the annotation came from, for error messages;
    ``name``: the image's name in its packaging when it is not torchvision's ``cars_<split>/<fname>``.
    """

    split: str
    fname: str
    path: Path
    official_class: int
    box: Optional[tuple[int, int, int, int]]
    origin: str
    name: Optional[str] = None

    @property
    def image(self) -> str:
        """The image's relative name, e.g. ``cars_train/00001.jpg`` or ``car_ims/000001.jpg``."""
        return self.name or f"cars_{self.split}/{self.fname}"


@dataclass
class Source:
    """A readable dataset: ``class_names[k - 1]`` names official class k."""

    kind: str
    root: Path
    class_names: list[str]
    images: list[SourceImage] = field(default_factory=list)
    boxes: str = "official"   # "official" | "none" (every box is the whole image)
    extra: int = 0            # the last ``extra`` class names are a user's own classes (carbench.download.extra)


def search(root: Path, finder: Callable[[Path], Optional[T]], depth: int = MAX_NESTING) -> Optional[T]:
    """``finder`` applied to ``root``, then to its sub-folders breadth first, down to ``depth`` levels."""
    level = [root]
    for _ in range(depth + 1):
        for folder in level:
            found = finder(folder)
            if found is not None:
                return found
        level = [d for folder in level for d in sorted(folder.iterdir()) if d.is_dir()
                 and not d.name.startswith(".") and d.name not in ("cars_train", "cars_test", ALL_IN_ONE_IMAGES)]
    return None


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


def find_torchvision(root: Path, test_labels: Optional[Path] = None) -> Optional[TorchvisionFiles]:
    """Resolve a torchvision-style folder at or up to two levels below ``root``; None if there is none.

    ``test_labels``: a ``cars_test_annos_withlabels.mat`` to use when the folder has none.
    """
    def at(base: Path) -> Optional[TorchvisionFiles]:
        train, devkit = _image_dir(base, "train"), _first_dir(base / "devkit", base / "car_devkit" / "devkit")
        if train is None or devkit is None:
            return None
        test = _image_dir(base, "test") or base / "cars_test"
        candidates = (base / TEST_LABELS, devkit / TEST_LABELS, *([test_labels] if test_labels else []))
        labels = next((p for p in candidates if p.is_file()), base / TEST_LABELS)
        return TorchvisionFiles(root=base, images={"train": train, "test": test}, meta=devkit / "cars_meta.mat",
                                train_annos=devkit / "cars_train_annos.mat", test_labels=labels)

    return search(root, at)


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


# ----------------------------------------------------------------------------- all-in-one
def find_all_in_one(root: Path) -> Optional[Path]:
    """The folder holding ``cars_annos.mat`` and ``car_ims/`` at or below ``root``; None if absent."""
    return search(root, lambda d: d if (d / ALL_IN_ONE).is_file() and (d / ALL_IN_ONE_IMAGES).is_dir() else None)


def read_all_in_one_folder(root: Path) -> Source:
    """Read ``root/cars_annos.mat``; images are ``root/<relative_im_path>``, named by that path."""
    mat = root / ALL_IN_ONE
    names, rows = read_all_in_one(mat)
    source = Source(kind="all_in_one", root=root, class_names=names)
    for ann in rows:
        origin = f"{mat} row {ann.row}"
        rel = PurePosixPath(ann.path.replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise DataError(f"{origin}: relative_im_path {ann.path!r} must stay inside {root}")
        source.images.append(SourceImage(split="test" if ann.test else "train", fname=rel.name,
                                         path=root.joinpath(*rel.parts), official_class=ann.official_class,
                                         box=ann.box, origin=origin, name=rel.as_posix()))
    return source


# ----------------------------------------------------------------------------- Kaggle class folders
def find_class_folders(root: Path) -> Optional[Path]:
    """The folder holding ``train/`` and ``test/`` class folders at or below ``root``; None if absent."""
    return search(root, lambda d: d if all(_has_subdirs(d / split) for split in SPLITS) else None)


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
    source.boxes = "none"
    return source


# ----------------------------------------------------------------------------- Hugging Face parquet
def find_parquet(root: Path) -> Optional[dict[str, list[Path]]]:
    """``{"train": [...], "test": [...]}`` parquet files at or below ``root`` (names start with the split)."""
    def at(folder: Path) -> Optional[dict[str, list[Path]]]:
        files = sorted(folder.glob("*.parquet"))
        found = {split: [p for p in files if p.name.startswith(split)] for split in SPLITS}
        return found if all(found.values()) else None

    return search(root, at)


def _parquet_class_names(path: Path, count: int) -> list[str]:
    """Class names from the ``huggingface`` schema metadata (a ClassLabel's names); ``class_<k>`` otherwise."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    try:
        info = json.loads(meta[b"huggingface"])
        names = info["info"]["features"]["label"]["names"]
        if isinstance(names, list) and len(names) >= count:
            return [str(n) for n in names]
    except (KeyError, TypeError, ValueError):
        pass
    return [f"class_{k}" for k in range(1, count + 1)]


def read_parquet_folder(files: dict[str, list[Path]], dest: Path) -> Source:
    """Write the parquet images into ``dest/cars_<split>/`` and return them as a box-less Source."""
    import pyarrow.parquet as pq

    images: list[SourceImage] = []
    top = 0
    for split in SPLITS:
        folder = dest / f"cars_{split}"
        folder.mkdir(parents=True, exist_ok=True)
        for path in files[split]:
            table = pq.read_table(path)
            missing = [c for c in ("image", "label") if c not in table.column_names]
            if missing:
                raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(table.column_names)})")
            for row, (image, label) in enumerate(zip(table.column("image").to_pylist(),
                                                     table.column("label").to_pylist())):
                data = image.get("bytes") if isinstance(image, dict) else None
                if not data or label is None:
                    raise DataError(f"{path} row {row + 1}: no image bytes or no label")
                fname = f"{len(images) + 1:05d}.jpg"
                (folder / fname).write_bytes(data)
                images.append(SourceImage(split=split, fname=fname, path=folder / fname,
                                          official_class=int(label) + 1, box=None, origin=f"{path} row {row + 1}"))
                top = max(top, int(label) + 1)
    names = _parquet_class_names(files["train"][0], top)
    warnings.warn(f"{dest}: the parquet copy has no bounding boxes; every box is the whole image",
                  DataWarning, stacklevel=2)
    return Source(kind="hf_parquet", root=dest, class_names=names, images=images, boxes="none")


# ----------------------------------------------------------------------------- archives
def find_archives(root: Path) -> Optional[list[Path]]:
    """The archives directly in ``root``; None if none. Some but not all official ones: a DataError."""
    archives = sorted(p for p in root.iterdir() if is_archive(p))
    if not archives:
        return None
    names = {p.name for p in archives}
    official = set(ARCHIVES.values())
    if names & official and not official <= names:
        missing = sorted(official - names) + ([] if (root / TEST_LABELS).is_file() else [TEST_LABELS])
        raise DataError(f"{root} holds some official archives but not {', '.join(missing)}")
    if official <= names and not (root / TEST_LABELS).is_file():
        raise DataError(f"{root} holds some official archives but not {TEST_LABELS}")
    return archives


def extract_archives(root: Path, archives: list[Path], dest: Path) -> None:
    """Extract every archive of ``root`` into ``dest`` and copy its loose ``.mat`` files beside them."""
    for archive in archives:
        safe_extract(archive, dest)
    for mat in sorted(root.glob("*.mat")):
        shutil.copyfile(mat, dest / mat.name)


# ----------------------------------------------------------------------------- entry point
def describe_layouts() -> str:
    """One line per accepted layout, for error messages."""
    return ("torchvision's stanford_cars folder (cars_train/ cars_test/ devkit/*.mat "
            f"{TEST_LABELS}), the all-in-one packaging ({ALL_IN_ONE_IMAGES}/ + {ALL_IN_ONE}), a folder "
            f"holding archives of either ({', '.join(ARCHIVES.values())} + {TEST_LABELS}, or car_ims.tgz + "
            f"{ALL_IN_ONE}), Hugging Face parquet files (train*.parquet, test*.parquet), or Kaggle class "
            "folders (train/<class name>/*.jpg and test/<class name>/*.jpg)")


def _read_folder(root: Path, test_labels: Optional[Path]) -> Optional[Source]:
    """The image folder layouts (torchvision, all-in-one) at or below ``root``; None when neither is there."""
    files = find_torchvision(root, test_labels)
    if files is not None:
        return read_torchvision(files)
    folder = find_all_in_one(root)
    if folder is not None:
        return read_all_in_one_folder(folder)
    return None


@contextlib.contextmanager
def open_local(path: str | Path, scratch_dir: str | Path, test_labels: Optional[Path] = None) -> Iterator[Source]:
    """Detect the layout of ``path`` and yield its :class:`Source`.

    Archives and parquet images are unpacked into a temporary folder under ``scratch_dir``, removed on exit,
    so the yielded image paths are valid only inside the ``with`` block.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"data.path {root} is not a directory")
    source = _read_folder(root, test_labels)
    if source is not None:
        yield source
        return
    archives = find_archives(root)
    parquet = find_parquet(root) if archives is None else None
    if archives is not None or parquet is not None:
        Path(scratch_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="extract-", dir=scratch_dir) as tmp:
            if parquet is not None:
                yield read_parquet_folder(parquet, Path(tmp))
                return
            extract_archives(root, archives, Path(tmp))
            source = _read_folder(Path(tmp), test_labels)
            if source is None:
                raise DataError(f"the archives in {root} ({', '.join(a.name for a in archives)}) hold neither "
                                f"cars_train/ + devkit/ nor {ALL_IN_ONE_IMAGES}/ + {ALL_IN_ONE}")
            source.kind = f"archives/{source.kind}"
            yield source
        return
    folders = find_class_folders(root)
    if folders is not None:
        yield read_class_folders(folders)
        return
    found = ", ".join(sorted(p.name for p in root.iterdir())[:12]) or "nothing"
    raise DataError(f"{root} matches no known layout (found: {found}); expected {describe_layouts()}")
