"""Every kind of bad input: a DataError naming the file (and row/field), and no partial output left behind."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import scipy.io
from PIL import Image

from carbench.config import DataConfig, build
from carbench.data.crop import write_crops
from carbench.data.crops import crop_box
from carbench.data.download import acquire
from carbench.errors import DataError
from carbench.data.layouts import open_local
from carbench.data.manifest import read_manifest
from carbench.data.matfiles import BOX_FIELDS, MatAnnotation, read_annotations, write_annotations
from carbench.data.sources import Route, load_sources
from carbench.data.split import write_split
from carbench.data.store import load_split

from conftest import SYNTHETIC_TINY, crop_config, make_official_archives, repo_params, split_config

TOTAL = SYNTHETIC_TINY["num_classes"] * (SYNTHETIC_TINY["train_per_class"] + SYNTHETIC_TINY["test_per_class"])
TRAIN_MAT = "devkit/cars_train_annos.mat"


@pytest.fixture
def source(synthetic_source, tmp_path):
    """A private, editable copy of the tiny synthetic dataset."""
    return shutil.copytree(synthetic_source, tmp_path / "source")


def _data(path, tmp_path, skip: bool = False, **extra) -> DataConfig:
    raw = repo_params({"data": {"source": "local", "path": str(path), "cache_dir": str(tmp_path / "cache"),
                                "skip_bad_images": skip, **extra}})
    return build(DataConfig, raw["data"], "data")


def _download(path, tmp_path, skip: bool = False) -> dict:
    return acquire(_data(path, tmp_path, skip), 0, tmp_path / "raw", tmp_path / "data.json")


def _assert_no_download_output(tmp_path) -> None:
    assert not (tmp_path / "raw").exists() and not (tmp_path / "data.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".raw")]  # no temporary leftovers


def _edit_train_rows(root, edit) -> None:
    """Rewrite the train annotations with ``edit(rows) -> rows``."""
    path = root / TRAIN_MAT
    write_annotations(path, edit(read_annotations(path)))


def _replace(rows, index: int, **changes) -> list:
    row = rows[index]
    rows[index] = MatAnnotation(changes.get("fname", row.fname), changes.get("box", row.box),
                                changes.get("official_class", row.official_class), row.row)
    return rows


# ----------------------------------------------------------------------------- download-time problems
def test_unreadable_jpeg(source, tmp_path):
    (source / "cars_train" / "00002.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg" * 10)
    with pytest.raises(DataError, match=r"cars_train_annos\.mat row 2: not a readable image.*00002\.jpg"):
        _download(source, tmp_path)
    _assert_no_download_output(tmp_path)


def test_not_an_image_names_the_file_and_the_way_forward(source, tmp_path):
    bad = source / "cars_train" / "00002.jpg"
    bad.write_bytes(b"Just some notes, saved with the wrong name.\n" * 4)
    with pytest.raises(DataError) as info:
        _download(source, tmp_path)
    message = str(info.value)
    assert message.endswith(f"row 2: not a readable image: no known image format (image {bad}); "
                            "fix or remove it, or set data.skip_bad_images: true to skip bad images")
    assert " object at 0x" not in message and "\n" not in message


def test_every_refused_image_names_the_skip_option(source, tmp_path):
    (source / "cars_train" / "00003.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"00003\.jpg\); fix or remove it, or set data\.skip_bad_images: true"):
        _download(source, tmp_path)


def test_zero_byte_file(source, tmp_path):
    (source / "cars_train" / "00003.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"row 3: zero-byte file \(image .*cars_train/00003\.jpg\)"):
        _download(source, tmp_path)
    _assert_no_download_output(tmp_path)


def test_annotation_whose_image_is_missing(source, tmp_path):
    (source / "cars_train" / "00004.jpg").unlink()
    with pytest.raises(DataError, match=r"row 4: image file not found: .*cars_train/00004\.jpg"):
        _download(source, tmp_path)
    _assert_no_download_output(tmp_path)


@pytest.mark.parametrize("box, message", [((500, 500, 600, 600), "lies outside the"),
                                          ((30, 10, 20, 40), "empty box"), ((10, 40, 20, 30), "empty box")])
def test_bad_box(source, tmp_path, box, message):
    _edit_train_rows(source, lambda rows: _replace(rows, 0, box=box))
    with pytest.raises(DataError, match=rf"cars_train_annos\.mat row 1: .*{message}.*00001\.jpg"):
        _download(source, tmp_path)
    _assert_no_download_output(tmp_path)


@pytest.mark.parametrize("official_class", [0, 197])
def test_class_out_of_range(source, tmp_path, official_class):
    _edit_train_rows(source, lambda rows: _replace(rows, 4, official_class=official_class))
    with pytest.raises(DataError, match=rf"cars_train_annos\.mat row 5: class {official_class} is out of range"):
        _download(source, tmp_path)
    _assert_no_download_output(tmp_path)


def test_duplicate_file_name(source, tmp_path):
    _edit_train_rows(source, lambda rows: _replace(rows, 1, fname=rows[0].fname))
    with pytest.raises(DataError, match=r"duplicate file name cars_train/00001\.jpg: .*row 1 and .*row 2"):
        _download(source, tmp_path)
    _assert_no_download_output(tmp_path)


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
        _download(source, tmp_path)
    _assert_no_download_output(tmp_path)


def test_fname_escaping_the_image_folder(source, tmp_path):
    _edit_train_rows(source, lambda rows: _replace(rows, 0, fname="../cars_test/00001.jpg"))
    with pytest.raises(DataError, match=r"row 1: fname '\.\./cars_test/00001\.jpg' must be a plain file name"):
        _download(source, tmp_path)
    _assert_no_download_output(tmp_path)


def test_layout_that_matches_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty matches no known layout"):
        _download(tmp_path / "empty", tmp_path)
    _assert_no_download_output(tmp_path)


def test_failed_download_leaves_an_existing_output_unchanged(source, tmp_path):
    _download(source, tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()}
    metrics_before = (tmp_path / "data.json").read_bytes()
    (source / "cars_test" / "00001.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="zero-byte"):
        _download(source, tmp_path)
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()} == before
    assert (tmp_path / "data.json").read_bytes() == metrics_before


def test_skip_bad_images_at_download_lists_them(source, tmp_path):
    (source / "cars_train" / "00002.jpg").write_bytes(b"garbage")
    (source / "cars_train" / "00003.jpg").write_bytes(b"")
    _edit_train_rows(source, lambda rows: _replace(rows, 4, box=(30, 10, 20, 40)))
    with pytest.warns(UserWarning, match="skipped 3 bad image"):
        metrics = _download(source, tmp_path, skip=True)
    assert metrics["counts"]["total"] == TOTAL - 3
    assert sorted(s["image"] for s in json.loads((tmp_path / "data.json").read_text())["skipped"]) == \
        ["cars_train/00002.jpg", "cars_train/00003.jpg", "cars_train/00005.jpg"]


# ----------------------------------------------------------------------------- archives and URLs
def _tar_with(path, member: tarfile.TarInfo, data: bytes = b"x") -> None:
    with tarfile.open(path, "w:gz") as tar:
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)


@pytest.mark.parametrize("name, kind, link", [("../evil.txt", tarfile.REGTYPE, ""),
                                              ("/tmp/evil-carbench.txt", tarfile.REGTYPE, ""),
                                              ("cars_train/link", tarfile.SYMTYPE, "../../evil.txt"),
                                              ("cars_train/hard", tarfile.LNKTYPE, "../evil.txt")])
def test_archive_member_escaping_the_target(synthetic_source, tmp_path, name, kind, link):
    archives = make_official_archives(synthetic_source, tmp_path / "archives")
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, link
    _tar_with(archives["cars_train.tgz"], member)
    with pytest.raises(DataError, match=rf"cars_train\.tgz: .*{name.split('/')[-1]}.*(outside|escapes)"):
        _download(tmp_path / "archives", tmp_path)
    _assert_no_download_output(tmp_path)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "cache" / "evil.txt").exists()
    assert list((tmp_path / "cache").iterdir()) == []  # the extraction folder is gone


def test_corrupt_archive(synthetic_source, tmp_path):
    archives = make_official_archives(synthetic_source, tmp_path / "archives")
    archives["cars_test.tgz"].write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match=r"cars_test\.tgz: cannot extract"):
        _download(tmp_path / "archives", tmp_path)
    _assert_no_download_output(tmp_path)


def test_md5_mismatch_on_every_url(http_server, tmp_path):
    official = ("cars_train.tgz", "cars_test.tgz", "car_devkit.tgz", "cars_test_annos_withlabels.mat")
    http_server.files.update({name: b"tampered" for name in official})
    raw = repo_params({"data": {"source": "auto", "cache_dir": str(tmp_path / "cache")}})
    route = {"name": "loopback", "kind": "urls", "files": {
        name: {"urls": [http_server.url(name)], "md5": hashlib.md5(b"genuine").hexdigest()} for name in official}}
    sources = replace(load_sources(), routes=(build(Route, route, "routes[0]"),))
    with pytest.raises(DataError, match=r"loopback \(urls .*could not download cars_train\.tgz: .*md5 mismatch"):
        acquire(build(DataConfig, raw["data"], "data"), 0, tmp_path / "raw", tmp_path / "data.json",
                sources=sources)
    _assert_no_download_output(tmp_path)
    assert not (tmp_path / "cache" / "loopback" / "cars_train.tgz").exists()


# ----------------------------------------------------------------------------- crop-time problems
def _split_and_crop(tmp_path, skip: bool = False, workers: int = 1) -> dict:
    write_split(split_config(), 0, tmp_path / "raw", tmp_path / "split", None, None)
    return write_crops(crop_config(workers=workers), skip, tmp_path / "raw", tmp_path / "split", tmp_path / "crops",
                       tmp_path / "crop.json", None)


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.parametrize("workers", [1, 2])
def test_truncated_jpeg_fails_the_crop_stage(source, tmp_path, workers):
    _truncate(source / "cars_test" / "00002.jpg")
    _download(source, tmp_path)  # the header is intact: only decoding finds the damage
    with pytest.raises(DataError, match=r"cannot decode cars_test/00002\.jpg .*images\.bin.*skip_bad_images"):
        _split_and_crop(tmp_path, workers=workers)
    assert not (tmp_path / "crops").exists() and not (tmp_path / "crop.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".crops")]


@pytest.mark.parametrize("workers", [1, 2])
def test_skip_bad_images_at_crop_lists_them(source, tmp_path, workers, capsys):
    _truncate(source / "cars_test" / "00002.jpg")
    _download(source, tmp_path)
    capsys.readouterr()
    metrics = _split_and_crop(tmp_path, skip=True, workers=workers)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert err == [f"warning: crop skipped 1 unreadable image(s) (data.skip_bad_images: true); "
                   f"listed under 'skipped' in {tmp_path / 'crop.json'}"]
    assert " object at 0x" not in metrics["skipped"][0]["reason"]
    assert [s["image"] for s in metrics["skipped"]] == ["cars_test/00002.jpg"]
    test = load_split(tmp_path / "crops", "test")
    assert "cars_test/00002.jpg" not in test.names and len(test.images) == len(test.names) == metrics["counts"]["test"]
    assert sum(metrics["counts"].values()) == TOTAL - 1


def _save_as(path, image: Image.Image, **kwargs) -> None:
    """Overwrite ``path`` (named .jpg) with ``image`` in the given format."""
    out = io.BytesIO()
    image.save(out, **kwargs)
    path.write_bytes(out.getvalue())


def test_png_cmyk_and_16_bit_images_are_decoded_by_content(source, tmp_path):
    """A PNG named .jpg, a CMYK JPEG and a 16-bit grey PNG, through download, split and crop."""
    train = source / "cars_train"
    originals = {name: Image.open(train / name).convert("RGB") for name in ("00001.jpg", "00002.jpg", "00003.jpg")}
    _save_as(train / "00001.jpg", originals["00001.jpg"], format="PNG")
    _save_as(train / "00002.jpg", originals["00002.jpg"].convert("CMYK"), format="JPEG", quality=98)
    grey16 = (np.asarray(originals["00003.jpg"].convert("L"), dtype=np.uint16) * 257)
    _save_as(train / "00003.jpg", Image.fromarray(grey16), format="PNG")
    metrics = _download(source, tmp_path)
    assert metrics["formats"]["PNG"] == 2
    _split_and_crop(tmp_path)
    crops = {split: load_split(tmp_path / "crops", split) for split in ("train", "val")}
    for name, original in originals.items():
        image = f"cars_train/{name}"
        split = next(s for s, data in crops.items() if image in data.names)
        crop = crops[split].images[crops[split].names.index(image)].astype(int)
        reference = original.convert("L").convert("RGB") if name == "00003.jpg" else original
        row = read_manifest(tmp_path / "raw").set_index("image").loc[image]
        expected = np.asarray(crop_box(reference, tuple(row[["x1", "y1", "x2", "y2"]]), 0.0, crop.shape[0], False))
        assert np.abs(crop - expected).mean() < 4.0, name


def test_crop_store_records_where_the_images_came_from(source, tmp_path):
    """The data source travels data/raw -> data/crops -> best.pt, so predict can warn about a demo model."""
    _download(source, tmp_path)
    _split_and_crop(tmp_path)
    recorded = json.loads((tmp_path / "raw" / "classes.json").read_text())["source"]
    assert json.loads((tmp_path / "crops" / "meta.json").read_text())["source"] == recorded == "torchvision"


def test_sources_are_never_modified(source, tmp_path):
    before = {str(p): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    _download(source, tmp_path)
    with open_local(source, tmp_path / "scratch"):
        pass
    assert {str(p): p.read_bytes() for p in source.rglob("*") if p.is_file()} == before
