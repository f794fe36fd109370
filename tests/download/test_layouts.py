"""carbench.download.layouts, local sources: torchvision layout (and repackagings), official archives, Kaggle class folders, real data."""
from __future__ import annotations

import shutil

import pytest
from PIL import Image
from support.data import (
    SYNTHETIC_TINY,
    assert_no_download_output,
    download_local,
    make_official_archives,
)

from carbench.download.layouts import open_local
from carbench.core.errors import DataError, DataWarning

TRAIN = SYNTHETIC_TINY["num_classes"] * SYNTHETIC_TINY["train_per_class"]
TEST = SYNTHETIC_TINY["num_classes"] * SYNTHETIC_TINY["test_per_class"]


def _snapshot(root) -> dict:
    """Every file's size and modification time, to prove a source is left untouched."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _read(path, scratch):
    with open_local(path, scratch) as source:
        return source.kind, [(i.image, i.official_class, i.box) for i in source.images], source.class_names


def test_torchvision_layout_and_its_parent(synthetic_source, tmp_path):
    before = _snapshot(synthetic_source)
    kind, images, names = _read(synthetic_source, tmp_path)
    assert kind == "torchvision" and len(images) == TRAIN + TEST and len(names) == SYNTHETIC_TINY["num_classes"]
    assert images[0][0] == "cars_train/00001.jpg" and images[-1][0] == f"cars_test/{TEST:05d}.jpg"
    assert _read(synthetic_source.parent, tmp_path)[1] == images  # the folder holding stanford_cars/
    assert _snapshot(synthetic_source) == before


def test_repackaged_torchvision_layout(synthetic_source, tmp_path):
    """Images nested one level, the devkit as car_devkit/devkit, test labels inside the devkit."""
    root = tmp_path / "kaggle_copy"
    for split in ("train", "test"):
        shutil.copytree(synthetic_source / f"cars_{split}", root / f"cars_{split}" / f"cars_{split}")
    shutil.copytree(synthetic_source / "devkit", root / "car_devkit" / "devkit")
    shutil.copyfile(synthetic_source / "cars_test_annos_withlabels.mat",
                    root / "car_devkit" / "devkit" / "cars_test_annos_withlabels.mat")
    assert _read(root, tmp_path / "scratch")[1] == _read(synthetic_source, tmp_path / "scratch")[1]


def test_official_archives_are_extracted_to_a_temporary_folder(synthetic_source, tmp_path):
    make_official_archives(synthetic_source, tmp_path / "archives")
    before = _snapshot(tmp_path / "archives")
    scratch = tmp_path / "scratch"
    with open_local(tmp_path / "archives", scratch) as source:
        assert source.kind == "archives/torchvision"
        assert all(item.path.is_file() for item in source.images)
        images = [(i.image, i.official_class, i.box) for i in source.images]
    assert images == _read(synthetic_source, scratch)[1]
    assert list(scratch.iterdir()) == []  # extraction removed
    assert _snapshot(tmp_path / "archives") == before


def test_incomplete_archives_name_what_is_missing(synthetic_source, tmp_path):
    archives = make_official_archives(synthetic_source, tmp_path / "archives")
    archives["car_devkit.tgz"].unlink()
    with pytest.raises(DataError, match="car_devkit.tgz"):
        _read(tmp_path / "archives", tmp_path / "scratch")


def _class_folders(synthetic_source, root) -> None:
    """Rearrange the synthetic set as Kaggle's train/<class name>/*.jpg."""
    from carbench.download.matfiles import read_annotations, read_class_names

    names = read_class_names(synthetic_source / "devkit" / "cars_meta.mat")
    for split, mat in (("train", "devkit/cars_train_annos.mat"), ("test", "cars_test_annos_withlabels.mat")):
        for ann in read_annotations(synthetic_source / mat):
            folder = root / split / names[ann.official_class - 1]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(synthetic_source / f"cars_{split}" / ann.fname, folder / ann.fname)
    (root / "train" / names[0] / "notes.txt").write_text("not an image: ignored")


@pytest.mark.parametrize("nesting", ["", "car_data/car_data"])
def test_kaggle_class_folders(synthetic_source, tmp_path, nesting):
    root = tmp_path / "kaggle"
    _class_folders(synthetic_source, root / nesting if nesting else root)
    with pytest.warns(DataWarning, match="no bounding boxes"):
        kind, images, names = _read(root, tmp_path / "scratch")
    assert kind == "class_folders" and len(images) == TRAIN + TEST
    assert names == sorted(names) and len(names) == SYNTHETIC_TINY["num_classes"]
    assert all(box is None for _, _, box in images)
    assert {image.split("/")[0] for image, _, _ in images} == {"cars_train", "cars_test"}


def test_a_layout_that_matches_nothing(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match=r"matches no known layout \(found: photos, readme.txt\)"):
        _read(tmp_path, tmp_path / "scratch")
    with pytest.raises(DataError, match="is not a directory"):
        _read(tmp_path / "absent", tmp_path / "scratch")


def test_torchvision_layout_without_test_labels_is_named(synthetic_source, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synthetic_source, root)
    (root / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DataError, match="cars_test_annos_withlabels.mat is missing"):
        _read(root, tmp_path / "scratch")


def test_real_raw300(real_data, tmp_path):
    kind, images, names = _read(real_data / "stanford-cars-raw300", tmp_path)
    splits = [image.split("/")[0] for image, _, _ in images]
    assert (splits.count("cars_train"), splits.count("cars_test")) == (156, 144)
    assert len({c for _, c, _ in images}) == 147 and len(names) == 196


def test_real_crops20(real_data, tmp_path):
    kind, images, _ = _read(real_data / "stanford-cars-crops20", tmp_path)
    splits = [image.split("/")[0] for image, _, _ in images]
    assert (splits.count("cars_train"), splits.count("cars_test")) == (419, 404)
    assert {c for _, c, _ in images} == set(range(1, 21))
    image, _, box = images[0]
    with Image.open(real_data / "stanford-cars-crops20" / image) as img:
        assert box == (1, 1, *img.size)  # boxes cover the whole crop


def test_a_kaggle_zip_beside_the_test_labels(synthetic_source, tmp_path):
    """Kaggle's browser download (one zip, nested folders, devkit without test labels) + the labels file."""
    import zipfile

    from support import packagings

    loose = packagings.kaggle_jessicali(synthetic_source, tmp_path / "loose")
    folder = tmp_path / "download"
    folder.mkdir()
    with zipfile.ZipFile(folder / "archive.zip", "w") as zf:
        for path in sorted(loose.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(loose).as_posix())
    shutil.copyfile(synthetic_source / "cars_test_annos_withlabels.mat", folder / "cars_test_annos_withlabels.mat")
    kind, images, _ = _read(folder, tmp_path / "scratch")
    assert kind == "archives/torchvision"
    assert sorted(images) == sorted(_read(synthetic_source, tmp_path / "scratch2")[1])


def test_the_all_in_one_packaging(synthetic_source, tmp_path):
    from support import packagings

    root = packagings.all_in_one(synthetic_source, tmp_path / "aio")
    kind, images, names = _read(root.parent, tmp_path / "scratch")  # found one level down
    assert kind == "all_in_one" and images[0][0] == "car_ims/000001.jpg" and len(images) == TRAIN + TEST
    reference = _read(synthetic_source, tmp_path / "scratch2")
    assert sorted((c, b) for _, c, b in images) == sorted((c, b) for _, c, b in reference[1])
    assert names == reference[2]


def test_zip_member_escaping_the_target_is_refused(tmp_path):
    import zipfile

    folder = tmp_path / "download"
    folder.mkdir()
    with zipfile.ZipFile(folder / "evil.zip", "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(DataError, match=r"evil\.zip: member '\.\./outside\.txt' would be extracted outside"):
        _read(folder, tmp_path / "scratch")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "scratch" / "outside.txt").exists()


def test_layout_that_matches_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty matches no known layout"):
        download_local(tmp_path / "empty", tmp_path)
    assert_no_download_output(tmp_path)
