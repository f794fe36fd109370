"""The crop store reader API: load_meta / load_split, memory-mapped, with consistency checks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from carbench.errors import DataError
from carbench.store import CropSplit, load_meta, load_split

from conftest import CROP_SIZE_TINY, SYNTHETIC_TINY


def test_meta(synthetic_crops):
    meta = load_meta(synthetic_crops)
    assert meta["size"] == CROP_SIZE_TINY and meta["margin"] == 0.0 and meta["keep_aspect"] is False
    assert meta["num_classes"] == len(meta["class_names"]) == SYNTHETIC_TINY["num_classes"]
    assert set(meta["counts"]) == {"train", "val", "test"}


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_load_split(synthetic_crops, split):
    data = load_split(synthetic_crops, split)
    assert isinstance(data, CropSplit) and isinstance(data.images, np.memmap)
    assert data.images.shape == (load_meta(synthetic_crops)["counts"][split], CROP_SIZE_TINY, CROP_SIZE_TINY, 3)
    assert data.images.dtype == np.uint8 and data.labels.dtype == np.int64
    assert len(data) == len(data.names) == len(data.labels)
    in_memory = load_split(synthetic_crops, split, mmap=False)
    assert not isinstance(in_memory.images, np.memmap) and np.array_equal(in_memory.images, data.images)


def test_splits_are_disjoint_and_cover_every_class(synthetic_crops):
    names = [load_split(synthetic_crops, s).names for s in ("train", "val", "test")]
    assert sum(map(len, names)) == len(set().union(*names))
    for split in ("train", "val", "test"):
        assert set(load_split(synthetic_crops, split).labels) == set(range(SYNTHETIC_TINY["num_classes"]))


@pytest.fixture
def store_copy(synthetic_crops, tmp_path):
    return shutil.copytree(synthetic_crops, tmp_path / "crops")


def test_missing_store_is_named(tmp_path):
    with pytest.raises(DataError, match="meta.json not found"):
        load_split(tmp_path, "train")


def test_unknown_split(store_copy):
    with pytest.raises(ValueError, match="split must be one of"):
        load_split(store_copy, "validation")


def test_rows_not_matching_the_index_are_refused(store_copy):
    np.save(store_copy / "val.npy", np.zeros((1, CROP_SIZE_TINY, CROP_SIZE_TINY, 3), np.uint8))
    with pytest.raises(DataError, match="val.npy has 1 rows but val.csv has"):
        load_split(store_copy, "val")


def test_wrong_size_is_refused(store_copy):
    meta = json.loads((store_copy / "meta.json").read_text())
    (store_copy / "meta.json").write_text(json.dumps({**meta, "size": CROP_SIZE_TINY * 2}))
    with pytest.raises(DataError, match="train.npy: expected uint8"):
        load_split(store_copy, "train")


def test_meta_missing_a_key_is_named(store_copy):
    meta = json.loads((store_copy / "meta.json").read_text())
    del meta["class_names"]
    (store_copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="missing key.*class_names"):
        load_meta(store_copy)
