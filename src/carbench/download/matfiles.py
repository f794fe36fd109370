"""Read and write the Stanford Cars devkit ``.mat`` files in their official structure.

The official files (and torchvision's reader) use MATLAB v5 files holding:

- ``cars_meta.mat``: ``class_names``, a ``(1, C)`` cell array of strings (official class k is entry k-1);
- ``cars_train_annos.mat`` / ``cars_test_annos_withlabels.mat``: ``annotations``, a ``(1, N)`` struct array
  with fields ``bbox_x1, bbox_y1, bbox_x2, bbox_y2`` (1-based inclusive pixel box, uint16), ``class``
  (1..196, uint8) and ``fname`` (``"00001.jpg"``); ``cars_test_annos.mat`` has no ``class``;
- ``cars_annos.mat`` (the all-in-one packaging, with ``car_ims.tgz``): ``annotations`` with fields
  ``relative_im_path`` (``"car_ims/000001.jpg"``), the four box fields, ``class`` and ``test`` (0/1) for all
  16,185 images, and ``class_names`` as in ``cars_meta.mat``.

Every problem is a :class:`DataError` naming the file, and the field and 1-based row where it applies.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..core.errors import DataError

BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
CLASS_FIELD = "class"
FNAME_FIELD = "fname"
ANNOTATIONS_VAR = "annotations"
CLASS_NAMES_VAR = "class_names"
PATH_FIELD = "relative_im_path"
TEST_FIELD = "test"
#: The official files store boxes as uint16 and classes as uint8; keep the same dtypes when writing.
BOX_DTYPE = np.uint16
CLASS_DTYPE = np.uint8
#: A v5 MAT file opens with 116 bytes of descriptive text. scipy writes the current time there, which would
#: make two runs with one seed differ by a byte and DVC see a changed output; we write this fixed text instead.
MAT_HEADER_TEXT = b"MATLAB 5.0 MAT-file, Platform: posix, written by carbench"
MAT_HEADER_BYTES = 116


@dataclass(frozen=True)
class MatAnnotation:
    """One row of an ``annotations`` struct array.

    ``box`` is ``(x1, y1, x2, y2)`` in official 1-based inclusive pixels; ``official_class`` is 1-based
    (None when the file has no ``class`` field); ``row`` is the 1-based row, for error messages.
    """

    fname: str
    box: tuple[int, int, int, int]
    official_class: Optional[int]
    row: int


def _load(path: Path) -> dict[str, Any]:
    """``scipy.io.loadmat`` with errors (missing, not a v5 .mat, v7.3/HDF5) naming the file."""
    import scipy.io  # imported here: scipy.io costs ~0.4 s and only the readers need it

    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        return scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=True)
    except NotImplementedError:
        raise DataError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save it as a v5 .mat") from None
    except Exception as exc:  # scipy raises ValueError/TypeError/OSError for corrupt files
        raise DataError(f"{path}: cannot read as a MATLAB .mat file ({exc})") from None


def _variable(content: dict[str, Any], name: str, path: Path) -> np.ndarray:
    if name not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise DataError(f"{path}: missing variable {name!r} (found: {', '.join(found) or 'nothing'})")
    return np.atleast_1d(content[name])


def _as_int(value: Any, path: Path, field: str, row: int) -> int:
    """An integer field value; squeeze_me leaves numpy scalars or 0-d/1-element arrays."""
    arr = np.asarray(value)
    if arr.size != 1 or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{path}: field {field!r} of row {row} is not a single number (got {value!r})")
    number = arr.reshape(()).item()
    if isinstance(number, float) and not number.is_integer():
        raise DataError(f"{path}: field {field!r} of row {row} is not an integer (got {number!r})")
    return int(number)


def _as_str(value: Any, path: Path, field: str, row: int) -> str:
    arr = np.asarray(value)
    if arr.size != 1 or arr.dtype.kind not in "US":
        raise DataError(f"{path}: field {field!r} of row {row} is not a string (got {value!r})")
    text = arr.reshape(()).item()
    return text.decode() if isinstance(text, bytes) else str(text)


def read_class_names(path: str | Path) -> list[str]:
    """The ``class_names`` of a ``cars_meta.mat``: C strings, official class k at index k-1."""
    path = Path(path)
    names = _variable(_load(path), CLASS_NAMES_VAR, path)
    return [_as_str(name, path, CLASS_NAMES_VAR, i + 1) for i, name in enumerate(names)]


def read_annotations(path: str | Path, require_class: bool = True) -> list[MatAnnotation]:
    """The rows of an ``annotations`` struct array, in file order.

    ``require_class``: the ``class`` field must exist (train and test-with-labels files); a missing
    field is a DataError naming the file and the field.
    """
    path = Path(path)
    annotations = _variable(_load(path), ANNOTATIONS_VAR, path)
    fields = annotations.dtype.names or ()
    wanted = BOX_FIELDS + ((CLASS_FIELD,) if require_class else ()) + (FNAME_FIELD,)
    for field in wanted:
        if field not in fields:
            raise DataError(f"{path}: annotations have no field {field!r} (fields: {', '.join(fields) or 'none'})")
    has_class = CLASS_FIELD in fields
    rows = []
    for i, record in enumerate(annotations):
        row = i + 1
        box = tuple(_as_int(record[f], path, f, row) for f in BOX_FIELDS)
        label = _as_int(record[CLASS_FIELD], path, CLASS_FIELD, row) if has_class else None
        fname = _as_str(record[FNAME_FIELD], path, FNAME_FIELD, row)
        rows.append(MatAnnotation(fname=fname, box=box, official_class=label, row=row))  # type: ignore[arg-type]
    return rows


@dataclass(frozen=True)
class AllInOneAnnotation:
    """One row of ``cars_annos.mat``: the image's relative path, box, 1-based class and split."""

    path: str
    box: tuple[int, int, int, int]
    official_class: int
    test: bool
    row: int


def read_all_in_one(path: str | Path) -> tuple[list[str], list[AllInOneAnnotation]]:
    """``(class_names, rows)`` of an all-in-one ``cars_annos.mat``, rows in file order."""
    path = Path(path)
    content = _load(path)
    names = [_as_str(n, path, CLASS_NAMES_VAR, i + 1) for i, n in enumerate(_variable(content, CLASS_NAMES_VAR, path))]
    annotations = _variable(content, ANNOTATIONS_VAR, path)
    fields = annotations.dtype.names or ()
    for field in (PATH_FIELD, *BOX_FIELDS, CLASS_FIELD, TEST_FIELD):
        if field not in fields:
            raise DataError(f"{path}: annotations have no field {field!r} (fields: {', '.join(fields) or 'none'})")
    rows = []
    for i, record in enumerate(annotations):
        row = i + 1
        test = _as_int(record[TEST_FIELD], path, TEST_FIELD, row)
        if test not in (0, 1):
            raise DataError(f"{path}: field 'test' of row {row} must be 0 or 1 (got {test})")
        rows.append(AllInOneAnnotation(
            path=_as_str(record[PATH_FIELD], path, PATH_FIELD, row),
            box=tuple(_as_int(record[f], path, f, row) for f in BOX_FIELDS),  # type: ignore[arg-type]
            official_class=_as_int(record[CLASS_FIELD], path, CLASS_FIELD, row), test=bool(test), row=row))
    return names, rows


def _savemat(path: str | Path, variables: dict[str, Any]) -> None:
    """``scipy.io.savemat`` with a fixed header text, so equal contents give equal bytes."""
    import io

    import scipy.io  # imported here: scipy.io costs ~0.4 s and only the .mat readers and writers need it

    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables)
    data = bytearray(buffer.getvalue())
    data[:MAT_HEADER_BYTES] = MAT_HEADER_TEXT.ljust(MAT_HEADER_BYTES)
    Path(path).write_bytes(bytes(data))


def write_all_in_one(path: str | Path, names: Sequence[str], rows: Sequence[AllInOneAnnotation]) -> None:
    """Write an all-in-one ``cars_annos.mat`` with the official variables, fields and dtypes."""
    fields = (PATH_FIELD, *BOX_FIELDS, CLASS_FIELD, TEST_FIELD)
    table = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, ann in enumerate(rows):
        table[0, i][PATH_FIELD] = np.array([ann.path])
        for field, value in zip(BOX_FIELDS, ann.box):
            table[0, i][field] = np.array([[value]], dtype=BOX_DTYPE)
        table[0, i][CLASS_FIELD] = np.array([[ann.official_class]], dtype=CLASS_DTYPE)
        table[0, i][TEST_FIELD] = np.array([[int(ann.test)]], dtype=CLASS_DTYPE)
    _savemat(path, {ANNOTATIONS_VAR: table, CLASS_NAMES_VAR: _name_cells(names)})


def _name_cells(names: Sequence[str]) -> np.ndarray:
    cells = np.empty((1, len(names)), dtype=object)
    for i, name in enumerate(names):
        cells[0, i] = np.array([name])
    return cells


def write_class_names(path: str | Path, names: Sequence[str]) -> None:
    """Write a ``cars_meta.mat`` whose ``class_names`` is a (1, C) cell array, like the official file."""
    _savemat(path, {CLASS_NAMES_VAR: _name_cells(names)})


def write_annotations(path: str | Path, rows: Sequence[MatAnnotation], with_class: bool = True) -> None:
    """Write an ``annotations`` (1, N) struct array with the official field names and dtypes."""
    fields = BOX_FIELDS + ((CLASS_FIELD,) if with_class else ()) + (FNAME_FIELD,)
    table = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, ann in enumerate(rows):
        for field, value in zip(BOX_FIELDS, ann.box):
            table[0, i][field] = np.array([[value]], dtype=BOX_DTYPE)
        if with_class:
            if ann.official_class is None:
                raise ValueError(f"row {ann.row} has no class but with_class is true")
            table[0, i][CLASS_FIELD] = np.array([[ann.official_class]], dtype=CLASS_DTYPE)
        table[0, i][FNAME_FIELD] = np.array([ann.fname])
    _savemat(path, {ANNOTATIONS_VAR: table})
