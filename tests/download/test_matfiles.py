"""carbench.download.matfiles, devkit .mat files: official structure written and read back, errors naming file, field and row."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from support.data import TRAIN_MAT, assert_no_download_output, download_local

from carbench.download.matfiles import (
    BOX_FIELDS,
    MatAnnotation,
    read_annotations,
    read_class_names,
    write_annotations,
    write_class_names,
)
from carbench.core.errors import DataError

ROWS = [MatAnnotation("00001.jpg", (1, 2, 30, 40), 5, 1), MatAnnotation("00002.jpg", (3, 4, 50, 60), 196, 2)]


def test_annotations_round_trip_with_official_structure(tmp_path):
    path = tmp_path / "cars_train_annos.mat"
    write_annotations(path, ROWS, with_class=True)
    raw = scipy.io.loadmat(path)["annotations"]
    assert raw.shape == (1, 2)
    assert raw.dtype.names == BOX_FIELDS + ("class", "fname")
    assert raw[0, 0]["bbox_x1"].dtype == np.uint16 and raw[0, 0]["class"].dtype == np.uint8
    assert read_annotations(path) == ROWS


def test_test_annotations_without_class(tmp_path):
    path = tmp_path / "cars_test_annos.mat"
    write_annotations(path, ROWS, with_class=False)
    assert "class" not in scipy.io.loadmat(path)["annotations"].dtype.names
    rows = read_annotations(path, require_class=False)
    assert [r.official_class for r in rows] == [None, None]
    assert [r.box for r in rows] == [r.box for r in ROWS]


def test_same_contents_same_bytes_whatever_the_clock(tmp_path, monkeypatch):
    """scipy stamps the write time into the header; DVC would see a changed output on every rerun."""
    import time

    clock = iter(["Mon Nov 23 07:00:00 2026", "Mon Nov 23 07:00:01 2026"])
    monkeypatch.setattr(time, "asctime", lambda *args: next(clock))
    write_annotations(tmp_path / "a.mat", ROWS)
    write_annotations(tmp_path / "b.mat", ROWS)
    assert (tmp_path / "a.mat").read_bytes() == (tmp_path / "b.mat").read_bytes()
    assert read_annotations(tmp_path / "b.mat") == ROWS


def test_single_row_file_is_read(tmp_path):
    """squeeze_me turns a 1-row struct array into a 0-d array: still one annotation."""
    path = tmp_path / "one.mat"
    write_annotations(path, ROWS[:1])
    assert read_annotations(path) == ROWS[:1]


def test_class_names_round_trip(tmp_path):
    path = tmp_path / "cars_meta.mat"
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]
    write_class_names(path, names)
    assert scipy.io.loadmat(path)["class_names"].shape == (1, 2)
    assert read_class_names(path) == names


def test_missing_field_names_file_and_field(tmp_path):
    path = tmp_path / "cars_train_annos.mat"
    write_annotations(path, ROWS, with_class=False)
    with pytest.raises(DataError, match=r"cars_train_annos\.mat.*'class'"):
        read_annotations(path, require_class=True)


def test_missing_variable_is_named(tmp_path):
    path = tmp_path / "cars_meta.mat"
    scipy.io.savemat(path, {"names": np.array(["a"], dtype=object)})
    with pytest.raises(DataError, match=r"cars_meta\.mat.*'class_names'.*found: names"):
        read_class_names(path)


def test_not_a_mat_file_is_named(tmp_path):
    path = tmp_path / "cars_meta.mat"
    path.write_bytes(b"this is not a MATLAB file at all")
    with pytest.raises(DataError, match=r"cars_meta\.mat"):
        read_class_names(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="not found.*nothing.mat"):
        read_annotations(tmp_path / "nothing.mat")


def test_bad_value_names_field_and_row(tmp_path):
    path = tmp_path / "annos.mat"
    table = np.empty((1, 2), dtype=[(f, object) for f in BOX_FIELDS + ("class", "fname")])
    for i in range(2):
        for f in BOX_FIELDS:
            table[0, i][f] = np.array([[1]], dtype=np.uint16)
        table[0, i]["class"] = np.array([[1]], dtype=np.uint8)
        table[0, i]["fname"] = np.array([f"{i:05d}.jpg"])
    table[0, 1]["bbox_x2"] = np.array(["wide"])
    scipy.io.savemat(path, {"annotations": table})
    with pytest.raises(DataError, match=r"annos\.mat: field 'bbox_x2' of row 2"):
        read_annotations(path)


def test_real_devkit_files_parse(real_data):
    root = real_data / "stanford-cars-raw300"
    assert len(read_class_names(root / "devkit" / "cars_meta.mat")) == 196
    train = read_annotations(root / "devkit" / "cars_train_annos.mat")
    test = read_annotations(root / "cars_test_annos_withlabels.mat")
    unlabelled = read_annotations(root / "devkit" / "cars_test_annos.mat", require_class=False)
    assert (len(train), len(test), len(unlabelled)) == (156, 144, 144)
    assert all(1 <= r.official_class <= 196 for r in train + test)
    assert all(r.box[0] <= r.box[2] and r.box[1] <= r.box[3] for r in train + test)


def test_all_in_one_round_trip_and_a_missing_field(tmp_path):
    import scipy.io

    from carbench.download.matfiles import (
        AllInOneAnnotation,
        read_all_in_one,
        write_all_in_one,
    )

    rows = [AllInOneAnnotation("car_ims/000001.jpg", (1, 2, 30, 40), 2, False, 1),
            AllInOneAnnotation("car_ims/000002.jpg", (5, 6, 70, 80), 1, True, 2)]
    write_all_in_one(tmp_path / "cars_annos.mat", ["A", "B"], rows)
    assert read_all_in_one(tmp_path / "cars_annos.mat") == (["A", "B"], rows)
    content = scipy.io.loadmat(tmp_path / "cars_annos.mat")
    table = content["annotations"]
    stripped = np.empty(table.shape, dtype=[(n, object) for n in table.dtype.names if n != "test"])
    for name in stripped.dtype.names:
        stripped[name] = table[name]
    scipy.io.savemat(tmp_path / "bad.mat", {"annotations": stripped, "class_names": content["class_names"]})
    with pytest.raises(DataError, match=r"bad\.mat: annotations have no field 'test'"):
        read_all_in_one(tmp_path / "bad.mat")


def test_mat_file_with_a_missing_field(source, tmp_path):
    path = source / TRAIN_MAT
    rows = read_annotations(path)
    fields = [f for f in BOX_FIELDS + ("class", "fname") if f != "bbox_y2"]
    table = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        values = dict(zip(BOX_FIELDS, row.box), **{"class": row.official_class, "fname": row.fname})
        for field in fields:
            table[0, i][field] = np.array([values[field]]) if field == "fname" else np.array([[values[field]]])
    scipy.io.savemat(path, {"annotations": table})
    with pytest.raises(DataError, match=r"cars_train_annos\.mat: annotations have no field 'bbox_y2'"):
        download_local(source, tmp_path)
    assert_no_download_output(tmp_path)
