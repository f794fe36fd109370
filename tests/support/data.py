"""The tiny synthetic dataset's sizes and validated config sections for it, the official archives packed from it,
and the download stage run on a local folder with the checks every bad-input test makes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from carbench.config import DataConfig, build
from carbench.download.acquire import acquire
from carbench.download.matfiles import MatAnnotation, read_annotations, write_annotations
from support.params import repo_params

SYNTHETIC_TINY = {"num_classes": 4, "train_per_class": 6, "test_per_class": 3,
                  "min_size": 64, "max_size": 96, "grayscale_fraction": 0.25}


CROP_SIZE_TINY = 32


SEED = 0


def synthetic_config(**overrides: Any):
    """A validated :class:`carbench.config.SyntheticConfig` (``SYNTHETIC_TINY`` unless overridden)."""
    from carbench.config import SyntheticConfig, build

    return build(SyntheticConfig, {**SYNTHETIC_TINY, **overrides}, "data.synthetic")


def crop_config(**overrides: Any):
    """A validated :class:`carbench.config.CropConfig` (tiny crops, one worker unless overridden)."""
    from carbench.config import CropConfig, build

    raw = {"margin": 0.0, "size": CROP_SIZE_TINY, "keep_aspect": False, "workers": 1, "preview": 8}
    return build(CropConfig, {**raw, **overrides}, "crop")


def split_config(**overrides: Any):
    """A validated :class:`carbench.config.SplitConfig` (official strategy unless overridden)."""
    from carbench.config import SplitConfig, build

    raw = {"strategy": "official", "val_fraction": 0.2, "test_fraction": 0.2, "allow_missing_classes": False}
    return build(SplitConfig, {**raw, **overrides}, "split")


def make_official_archives(source: Path, dest: Path) -> dict[str, Path]:
    """Pack a torchvision-layout folder as the official files (cars_train.tgz, cars_test.tgz, car_devkit.tgz,
    cars_test_annos_withlabels.mat) into ``dest``; returns name -> path."""
    import shutil
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    for archive, folder in (("cars_train.tgz", "cars_train"), ("cars_test.tgz", "cars_test"),
                            ("car_devkit.tgz", "devkit")):
        with tarfile.open(dest / archive, "w:gz") as tar:
            tar.add(source / folder, arcname=folder)
    shutil.copyfile(source / "cars_test_annos_withlabels.mat", dest / "cars_test_annos_withlabels.mat")
    return {p.name: p for p in dest.iterdir()}


def local_data(path, tmp_path, skip: bool = False, **extra) -> DataConfig:
    raw = repo_params({"data": {"source": "local", "path": str(path), "cache_dir": str(tmp_path / "cache"),
                                "skip_bad_images": skip, **extra}})
    return build(DataConfig, raw["data"], "data")


def download_local(path, tmp_path, skip: bool = False) -> dict:
    return acquire(local_data(path, tmp_path, skip), 0, tmp_path / "raw", tmp_path / "data.json")


SYNTHETIC_TOTAL = SYNTHETIC_TINY["num_classes"] * (SYNTHETIC_TINY["train_per_class"] + SYNTHETIC_TINY["test_per_class"])


TRAIN_MAT = "devkit/cars_train_annos.mat"


def assert_no_download_output(tmp_path) -> None:
    assert not (tmp_path / "raw").exists() and not (tmp_path / "data.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".raw")]  # no temporary leftovers


def edit_train_rows(root, edit) -> None:
    """Rewrite the train annotations with ``edit(rows) -> rows``."""
    path = root / TRAIN_MAT
    write_annotations(path, edit(read_annotations(path)))


def replace_annotation(rows, index: int, **changes) -> list:
    row = rows[index]
    rows[index] = MatAnnotation(changes.get("fname", row.fname), changes.get("box", row.box),
                                changes.get("official_class", row.official_class), row.row)
    return rows
