"""carbench.download.manifest, packing data/raw: manifest columns, contiguous class ids, byte slices, header-only sizes,
metrics; every bad image or annotation a DataError naming the file (and row), or skipped and listed, no partial output."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from support.data import (
    SYNTHETIC_TINY,
    assert_no_download_output,
    download_local,
    edit_train_rows,
    replace_annotation,
)

from carbench.download.layouts import open_local
from carbench.download.manifest import build_raw
from carbench.data.raw import MANIFEST_COLUMNS, read_classes, read_manifest
from carbench.download.matfiles import MatAnnotation, read_annotations, write_annotations
from carbench.core.errors import DataError


def test_manifest_matches_the_source(synthetic_raw, synthetic_source):
    manifest = read_manifest(synthetic_raw)
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert list(manifest["official_split"].unique()) == ["train", "test"]  # official order: train then test
    blob = (synthetic_raw / "images.bin").read_bytes()
    for row in manifest.itertuples():
        data = blob[row.offset:row.offset + row.nbytes]
        assert data == (synthetic_source / row.image).read_bytes()  # original bytes, never re-encoded
        with Image.open(io.BytesIO(data)) as img:
            assert img.size == (row.width, row.height)
        assert 1 <= row.x1 <= row.x2 <= row.width and 1 <= row.y1 <= row.y2 <= row.height
    assert manifest["offset"].iloc[0] == 0 and (manifest["offset"] + manifest["nbytes"]).iloc[-1] == len(blob)


def test_classes_json(synthetic_raw):
    classes = read_classes(synthetic_raw)
    manifest = read_manifest(synthetic_raw)
    assert classes["official_classes"] == list(range(1, SYNTHETIC_TINY["num_classes"] + 1))
    assert classes["source"] == "torchvision"
    for row in manifest.itertuples():
        assert classes["class_names"][row.class_id] == row.class_name
        assert classes["official_classes"][row.class_id] == row.official_class


def _subset(synthetic_source, root, keep_classes: set[int], boxes: dict | None = None) -> None:
    """A copy of the synthetic set keeping only some official classes (and optionally new boxes by row)."""
    shutil.copytree(synthetic_source, root)
    for mat in (root / "devkit" / "cars_train_annos.mat", root / "cars_test_annos_withlabels.mat"):
        rows = [r for r in read_annotations(mat) if r.official_class in keep_classes]
        if boxes and mat.parent.name == "devkit":
            rows = [MatAnnotation(r.fname, boxes.get(i, r.box), r.official_class, r.row) for i, r in enumerate(rows)]
        write_annotations(mat, rows)


def test_class_ids_are_contiguous_over_classes_that_occur(synthetic_source, tmp_path):
    _subset(synthetic_source, tmp_path / "src", {2, 4})
    with open_local(tmp_path / "src", tmp_path) as source:
        metrics = build_raw(source, tmp_path / "raw", skip_bad=False)
    manifest = read_manifest(tmp_path / "raw")
    assert sorted(manifest["class_id"].unique()) == [0, 1]
    assert dict(zip(manifest["official_class"], manifest["class_id"])) == {2: 0, 4: 1}
    assert read_classes(tmp_path / "raw")["official_classes"] == [2, 4] and metrics["num_classes"] == 2


def test_overhanging_box_is_clamped_and_reported(synthetic_source, tmp_path):
    _subset(synthetic_source, tmp_path / "src", {1, 2, 3, 4}, boxes={0: (0, 0, 5000, 5000)})
    with open_local(tmp_path / "src", tmp_path) as source:
        metrics = build_raw(source, tmp_path / "raw", skip_bad=False)
    manifest = read_manifest(tmp_path / "raw")
    first = manifest[manifest.image == "cars_train/00001.jpg"].iloc[0]  # row 0 of the annotations
    assert (first.x1, first.y1, first.x2, first.y2) == (1, 1, first.width, first.height)
    assert metrics["boxes_clamped"] == [first.image] and metrics["num_boxes_clamped"] == 1


def test_png_named_jpg_is_read_by_content(synthetic_source, tmp_path):
    root = tmp_path / "src"
    shutil.copytree(synthetic_source, root)
    path = root / "cars_train" / "00001.jpg"
    Image.open(path).convert("RGB").save(path, format="PNG")
    with open_local(root, tmp_path) as source:
        metrics = build_raw(source, tmp_path / "raw", skip_bad=False)
    assert metrics["formats"]["PNG"] == 1


def test_metrics_counts(synthetic_source, tmp_path):
    with open_local(synthetic_source, tmp_path) as source:
        metrics = build_raw(source, tmp_path / "raw", skip_bad=False)
    per_class = SYNTHETIC_TINY["num_classes"]
    assert metrics["counts"] == {"train": per_class * SYNTHETIC_TINY["train_per_class"],
                                 "test": per_class * SYNTHETIC_TINY["test_per_class"],
                                 "total": per_class * (SYNTHETIC_TINY["train_per_class"]
                                                       + SYNTHETIC_TINY["test_per_class"])}
    assert metrics["skipped"] == [] and metrics["bytes"] == (tmp_path / "raw" / "images.bin").stat().st_size
    json.dumps(metrics)  # serialisable as metrics/data.json


def test_packing_is_deterministic(synthetic_source, tmp_path):
    for name in ("a", "b"):
        with open_local(synthetic_source, tmp_path) as source:
            build_raw(source, tmp_path / name, skip_bad=False)
    for file in ("images.bin", "manifest.csv", "classes.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_real_raw300_headers(real_data, tmp_path):
    with open_local(real_data / "stanford-cars-raw300", tmp_path) as source:
        metrics = build_raw(source, tmp_path / "raw", skip_bad=False)
    manifest = read_manifest(tmp_path / "raw")
    assert metrics["counts"] == {"train": 156, "test": 144, "total": 300} and metrics["num_classes"] == 147
    assert manifest["class_id"].max() == 146 and manifest["official_class"].max() <= 196
    assert np.all(manifest["x2"] <= manifest["width"]) and metrics["num_boxes_clamped"] == 0


def test_unreadable_jpeg(source, tmp_path):
    (source / "cars_train" / "00002.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg" * 10)
    with pytest.raises(DataError, match=r"cars_train_annos\.mat row 2: not a readable image.*00002\.jpg"):
        download_local(source, tmp_path)
    assert_no_download_output(tmp_path)


def test_not_an_image_names_the_file_and_the_way_forward(source, tmp_path):
    bad = source / "cars_train" / "00002.jpg"
    bad.write_bytes(b"Just some notes, saved with the wrong name.\n" * 4)
    with pytest.raises(DataError) as info:
        download_local(source, tmp_path)
    message = str(info.value)
    assert message.endswith(f"row 2: not a readable image: no known image format (image {bad}); "
                            "fix or remove it, or set data.skip_bad_images: true to skip bad images")
    assert " object at 0x" not in message and "\n" not in message


def test_every_refused_image_names_the_skip_option(source, tmp_path):
    (source / "cars_train" / "00003.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"00003\.jpg\); fix or remove it, or set data\.skip_bad_images: true"):
        download_local(source, tmp_path)


def test_zero_byte_file(source, tmp_path):
    (source / "cars_train" / "00003.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"row 3: not a readable image: zero-byte file \(image .*cars_train/00003\.jpg\)"):
        download_local(source, tmp_path)
    assert_no_download_output(tmp_path)


def test_annotation_whose_image_is_missing(source, tmp_path):
    (source / "cars_train" / "00004.jpg").unlink()
    with pytest.raises(DataError, match=r"row 4: image file not found: .*cars_train/00004\.jpg"):
        download_local(source, tmp_path)
    assert_no_download_output(tmp_path)


@pytest.mark.parametrize("box, message", [((500, 500, 600, 600), "lies outside the"),
                                          ((30, 10, 20, 40), "empty box"), ((10, 40, 20, 30), "empty box")])
def test_bad_box(source, tmp_path, box, message):
    edit_train_rows(source, lambda rows: replace_annotation(rows, 0, box=box))
    with pytest.raises(DataError, match=rf"cars_train_annos\.mat row 1: .*{message}.*00001\.jpg"):
        download_local(source, tmp_path)
    assert_no_download_output(tmp_path)


@pytest.mark.parametrize("official_class", [0, 197])
def test_class_out_of_range(source, tmp_path, official_class):
    edit_train_rows(source, lambda rows: replace_annotation(rows, 4, official_class=official_class))
    with pytest.raises(DataError, match=rf"cars_train_annos\.mat row 5: class {official_class} is out of range"):
        download_local(source, tmp_path)
    assert_no_download_output(tmp_path)


def test_duplicate_file_name(source, tmp_path):
    edit_train_rows(source, lambda rows: replace_annotation(rows, 1, fname=rows[0].fname))
    with pytest.raises(DataError, match=r"duplicate file name cars_train/00001\.jpg: .*row 1 and .*row 2"):
        download_local(source, tmp_path)
    assert_no_download_output(tmp_path)


def test_fname_escaping_the_image_folder(source, tmp_path):
    edit_train_rows(source, lambda rows: replace_annotation(rows, 0, fname="../cars_test/00001.jpg"))
    with pytest.raises(DataError, match=r"row 1: fname '\.\./cars_test/00001\.jpg' must be a plain file name"):
        download_local(source, tmp_path)
    assert_no_download_output(tmp_path)
