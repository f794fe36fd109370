"""carbench.data.split: disjoint, stratified per class, deterministic by seed, missing classes handled, k-fold."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from support.data import SEED, split_config

from carbench.config import ConfigError
from carbench.data.split import (
    assign_splits,
    fold_ids,
    holdout_count,
    read_split,
    write_split,
)
from carbench.core.errors import DataError, DataWarning

CLASSES = 7
PER_CLASS = (1, 2, 3, 5, 10, 20, 41)  # includes tiny classes


def _labels() -> tuple[np.ndarray, np.ndarray]:
    """Class ids with PER_CLASS official train images and as many official test images per class."""
    ids = np.concatenate([np.full(2 * n, c) for c, n in enumerate(PER_CLASS)])
    official = np.concatenate([np.array(["train"] * n + ["test"] * n) for n in PER_CLASS])
    order = np.random.default_rng(1).permutation(len(ids))  # interleaved like the real files
    return ids[order], official[order]


def test_holdout_count_keeps_both_sides():
    assert [holdout_count(n, 0.2) for n in (0, 1, 2, 3, 5, 10, 41)] == [0, 0, 1, 1, 1, 2, 8]
    assert holdout_count(4, 0.9) == 3


def test_official_strategy_is_stratified_and_disjoint():
    ids, official = _labels()
    splits = assign_splits(ids, official, split_config(val_fraction=0.2), seed=0)
    assert set(splits) == {"train", "val", "test"}
    assert np.array_equal(splits == "test", official == "test")  # the official test set, untouched
    for c, n in enumerate(PER_CLASS):
        in_class = ids == c
        assert (splits[in_class] == "val").sum() == holdout_count(n, 0.2)
        assert (splits[in_class] == "train").sum() == n - holdout_count(n, 0.2)


def test_pooled_strategy_is_stratified():
    ids, official = _labels()
    splits = assign_splits(ids, official, split_config(strategy="pooled", test_fraction=0.25, val_fraction=0.2), 0)
    for c, n in enumerate(PER_CLASS):
        in_class = splits[ids == c]
        test = holdout_count(2 * n, 0.25)
        assert (in_class == "test").sum() == test
        assert (in_class == "val").sum() == holdout_count(2 * n - test, 0.2)
    assert 0.2 < np.mean(splits == "test") < 0.3


@pytest.mark.parametrize("strategy", ["official", "pooled"])
def test_same_seed_same_split_other_seed_differs(strategy):
    ids, official = _labels()
    cfg = split_config(strategy=strategy)
    first = assign_splits(ids, official, cfg, seed=5)
    assert np.array_equal(first, assign_splits(ids, official, cfg, seed=5))
    assert not np.array_equal(first, assign_splits(ids, official, cfg, seed=6))


def test_write_split_end_to_end(synthetic_raw, tmp_path):
    metrics = write_split(split_config(), 0, synthetic_raw, tmp_path / "split", tmp_path / "split.json",
                          tmp_path / "plots" / "class_distribution.png")
    frame = read_split(tmp_path / "split")
    manifest = pd.read_csv(synthetic_raw / "manifest.csv")
    assert list(frame["image"]) == list(manifest["image"]) and list(frame.columns) == ["image", "class_id", "split"]
    assert json.loads((tmp_path / "split.json").read_text()) == metrics
    assert metrics["counts"] == {s: int((frame["split"] == s).sum()) for s in ("train", "val", "test")}
    assert metrics["classes"] == {"train": 4, "val": 4, "test": 4} and metrics["missing_classes"] == {}
    assert (tmp_path / "plots" / "class_distribution.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_classes_are_an_error_naming_them(synthetic_raw, tmp_path):
    # Pooled with test_fraction 0.9 leaves 1 of each class's 9 images outside test: it cannot reach val too.
    cfg = split_config(strategy="pooled", test_fraction=0.9)
    with pytest.raises(DataError, match=r"manifest.csv: some classes have no image in a split \(val: 0 "):
        write_split(cfg, 0, synthetic_raw, tmp_path / "split", tmp_path / "split.json", None)
    assert not (tmp_path / "split").exists() and not (tmp_path / "split.json").exists()


def test_missing_classes_allowed_warn_and_are_listed(synthetic_raw, tmp_path):
    cfg = split_config(strategy="pooled", test_fraction=0.9, allow_missing_classes=True)
    with pytest.warns(DataWarning, match="classes missing"):
        metrics = write_split(cfg, 0, synthetic_raw, tmp_path / "split", None, None)
    assert len(metrics["missing_classes"]["val"]) == 4 and metrics["classes"]["val"] == 0


def test_split_that_does_not_match_the_manifest_is_refused(synthetic_raw, synthetic_split, tmp_path):
    frame = read_split(synthetic_split)
    frame.iloc[::-1].to_csv(tmp_path / "split.csv", index=False)
    with pytest.raises(DataError, match="does not match the manifest"):
        read_split(tmp_path, pd.read_csv(synthetic_raw / "manifest.csv"))


def test_kfold_folds_are_disjoint_stratified_and_cover_every_image_once():
    ids = np.repeat(np.arange(5), [3, 7, 9, 10, 12])
    official = np.where(np.arange(len(ids)) % 2, "train", "test")
    tested = np.zeros(len(ids), int)
    folds = fold_ids(ids, 3, np.random.default_rng(SEED))
    for fold in range(3):
        splits = assign_splits(ids, official, split_config(strategy="kfold", folds=3, fold=fold), SEED)
        assert np.array_equal(splits == "test", folds == fold)                # the fold does not move the folds
        tested += splits == "test"
        for c in range(5):
            n = (ids == c).sum()
            assert abs((splits[ids == c] == "test").sum() - n / 3) < 1        # stratified
            assert (splits[ids == c] == "val").sum() >= 1
    assert (tested == 1).all()


def test_kfold_fold_must_be_below_folds():
    with pytest.raises(ConfigError, match=r"split\.fold must be < split\.folds"):
        split_config(strategy="kfold", folds=3, fold=3)
    with pytest.raises(ConfigError, match=r"split\.folds must be >= 2"):
        split_config(strategy="kfold", folds=1, fold=0)


def test_disjoint_strategy_splits_classes_at_the_point_and_carves_val_from_the_train_half_only():
    ids, official = _labels()
    splits = assign_splits(ids, official, split_config(strategy="disjoint", disjoint_at=4, val_fraction=0.2), seed=0)
    # the test half: every photo of classes 5-7 (official train and test alike), nothing else
    assert np.array_equal(splits == "test", ids >= 4)
    for c, n in enumerate(PER_CLASS[:4]):         # the train half: all 2n photos pooled, val carved per class
        in_class = splits[ids == c]
        assert (in_class == "val").sum() == holdout_count(2 * n, 0.2)
        assert (in_class == "train").sum() == 2 * n - holdout_count(2 * n, 0.2)
    other = assign_splits(ids, official, split_config(strategy="disjoint", disjoint_at=4), seed=1)
    assert np.array_equal(other == "test", splits == "test") and not np.array_equal(other, splits)


def test_disjoint_split_of_a_source_records_its_protocol_and_refuses_a_point_leaving_no_test_class(
        synthetic_raw, tmp_path):
    from carbench.data.split import read_protocol

    metrics = write_split(split_config(strategy="disjoint", disjoint_at=2), 0, synthetic_raw, tmp_path / "split",
                          None, None)
    frame = read_split(tmp_path / "split")
    assert sorted(frame.loc[frame["split"] == "test", "class_id"].unique()) == [2, 3]
    assert sorted(frame.loc[frame["split"] != "test", "class_id"].unique()) == [0, 1]
    # every class reaches the splits of its half, so nothing is reported missing
    assert metrics["classes"] == {"train": 2, "val": 2, "test": 2} and metrics["missing_classes"] == {}
    assert metrics["disjoint_at"] == 2 and read_protocol(tmp_path / "split") == 2
    write_split(split_config(), 0, synthetic_raw, tmp_path / "official", None, None)
    assert read_protocol(tmp_path / "official") == 0
    with pytest.raises(DataError, match=r"split.disjoint_at \(4\) leaves no test class: .* lists 4 classes"):
        write_split(split_config(strategy="disjoint", disjoint_at=4), 0, synthetic_raw, tmp_path / "bad", None, None)


def test_disjoint_val_by_class_holds_out_whole_train_half_classes(synthetic_raw, tmp_path):
    ids, official = _labels()
    cfg = split_config(strategy="disjoint", disjoint_at=4, val_fraction=0.3, disjoint_val="classes")
    splits = assign_splits(ids, official, cfg, seed=0)
    assert np.array_equal(splits == "test", ids >= 4)                  # the test half is untouched
    val, train = set(ids[splits == "val"].tolist()), set(ids[splits == "train"].tolist())
    assert len(val) == holdout_count(4, 0.3) and not val & train       # whole classes, none of them trained
    assert val | train == {0, 1, 2, 3}
    for c in val:                                                      # every photo of a val class
        assert (splits[ids == c] == "val").all()
    other = assign_splits(ids, official, cfg, seed=3)
    assert {tuple(sorted(set(ids[assign_splits(ids, official, cfg, seed=s) == "val"].tolist()))) for s in range(6)} \
        != {tuple(sorted(val))}                                       # the draw follows the seed
    assert np.array_equal(other == "test", splits == "test")
    metrics = write_split(split_config(strategy="disjoint", disjoint_at=2, disjoint_val="classes"), 0, synthetic_raw,
                          tmp_path / "split", None, None)
    assert metrics["classes"] == {"train": 1, "val": 1, "test": 2} and metrics["missing_classes"] == {}
    assert len(metrics["val_classes"]) == 1
