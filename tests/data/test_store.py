"""The crop store (carbench.data.store): its writers and the reader API (load_meta / load_split, memory-mapped, checked)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from support.data import CROP_SIZE_TINY, SYNTHETIC_TINY

from carbench.data.store import (
    CropSplit,
    StoreMeta,
    load_meta,
    load_split,
    store_files,
    write_store,
)
from carbench.core.errors import DataError


def test_meta(synthetic_crops):
    meta = load_meta(synthetic_crops)
    assert meta.size == CROP_SIZE_TINY and meta.margin == 0.0 and meta.keep_aspect is False
    assert meta.num_classes == len(meta.class_names) == SYNTHETIC_TINY["num_classes"]
    assert set(meta.counts) == {"train", "val", "test"}


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_load_split(synthetic_crops, split):
    data = load_split(synthetic_crops, split)
    assert isinstance(data, CropSplit) and isinstance(data.images, np.memmap)
    assert data.images.shape == (load_meta(synthetic_crops).counts[split], CROP_SIZE_TINY, CROP_SIZE_TINY, 3)
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


def test_write_store_round_trips_through_the_reader(tmp_path):
    rng = np.random.default_rng(0)
    splits = {split: (rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8), [f"{split}/{i}.jpg" for i in range(n)],
                      np.arange(n) % 3) for split, n in (("train", 5), ("val", 2), ("test", 4))}
    meta = write_store(tmp_path, splits, ["a", "b", "c"], margin=0.1, keep_aspect=True)
    assert load_meta(tmp_path) == meta == StoreMeta(6, 0.1, True, ("a", "b", "c"), 3, {"train": 5, "val": 2, "test": 4})
    for split, (images, names, labels) in splits.items():
        data = load_split(tmp_path, split)
        assert np.array_equal(data.images, images) and data.names == names and list(data.labels) == list(labels)
    assert (tmp_path / "train.csv").read_text().splitlines()[:2] == ["image,class_id", "train/0.jpg,0"]
    with pytest.raises(ValueError, match="same crop size"):
        write_store(tmp_path / "x", {"train": splits["train"], "val": (np.zeros((1, 7, 7, 3), np.uint8), ["v"], [0])},
                    ["a", "b", "c"])


def test_meta_with_a_wrong_type_or_inconsistent_classes_is_refused(store_copy):
    meta = json.loads((store_copy / "meta.json").read_text())
    (store_copy / "meta.json").write_text(json.dumps({**meta, "size": "big"}))
    with pytest.raises(DataError, match="wrong type"):
        load_meta(store_copy)
    (store_copy / "meta.json").write_text(json.dumps({**meta, "num_classes": meta["num_classes"] + 1}))
    with pytest.raises(DataError, match="class names"):
        load_meta(store_copy)


def test_a_training_run_reads_these_store_files():
    assert store_files(("train", "val")) == ("meta.json", "train.npy", "train.csv", "val.npy", "val.csv")


def test_meta_records_the_data_source_and_reads_older_stores_without_it(tmp_path):
    from carbench.data.store import write_meta

    meta = StoreMeta(6, 0.0, False, ("a",), 1, {"train": 0}, source="synthetic")
    write_meta(tmp_path, meta)
    assert json.loads((tmp_path / "meta.json").read_text())["source"] == "synthetic"
    assert load_meta(tmp_path) == meta
    write_meta(tmp_path, StoreMeta(6, 0.0, False, ("a",), 1, {"train": 0}))     # as written before it was recorded
    assert "source" not in json.loads((tmp_path / "meta.json").read_text())
    assert load_meta(tmp_path).source == ""


def test_a_disjoint_store_shows_training_only_its_train_half(tmp_path):
    from carbench.data.store import write_meta

    meta = StoreMeta(6, 0.0, False, ("a", "b", "c", "d"), 4, {"train": 0}, train_classes=2)
    write_meta(tmp_path, meta)
    assert json.loads((tmp_path / "meta.json").read_text())["train_classes"] == 2 and load_meta(tmp_path) == meta
    assert (meta.protocol, meta.disjoint) == ("disjoint", True)
    trained = meta.trained()      # ids 0..1 keep their ids: labels need no mapping
    assert (trained.class_names, trained.num_classes, trained.disjoint) == (("a", "b"), 2, False)
    classification = StoreMeta(6, 0.0, False, ("a", "b"), 2, {"train": 0})
    assert classification.trained() is classification and classification.protocol == "classification"
    assert "train_classes" not in classification.to_json()       # stores of the classification protocol unchanged
    write_meta(tmp_path, StoreMeta(6, 0.0, False, ("a", "b"), 2, {"train": 0}, train_classes=2))
    with pytest.raises(DataError, match="train_classes 2 is not below num_classes 2"):
        load_meta(tmp_path)
