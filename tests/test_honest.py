"""Honest comparison: bootstrap CIs, McNemar, k-fold split, a user's own classes (data.extra), sweep summary."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from carbench.report import stats, sweep
from carbench.config import ConfigError, DataConfig, build, parse_params
from carbench.errors import DataError
from carbench.data.split import assign_splits, fold_ids
from conftest import SEED, crop_config, repo_params, split_config, synthetic_config


# ----------------------------------------------------------------------------- stats
def test_constant_predictor_has_a_zero_width_interval():
    labels = np.arange(50) % 5
    for preds in (labels, (labels + 1) % 5):           # always right, always wrong
        ci = stats.bootstrap_ci(labels, preds, samples=200, confidence=0.95, seed=0)
        assert ci["top1"].low == ci["top1"].high
    always_right = stats.bootstrap_ci(labels, labels, 200, 0.95, 0)
    assert always_right["top1"].low == 1.0 and always_right["f1_macro"].low == pytest.approx(1.0)


def test_identical_predictions_give_p_one_and_a_lopsided_split_a_small_p():
    rng = np.random.default_rng(0)
    correct = rng.random(100) < 0.7
    assert stats.mcnemar(correct, correct) == 1.0
    a = np.ones(40, bool)
    b = a.copy()
    b[:12] = False                                      # 12 discordant pairs, all for a
    assert stats.mcnemar(a, b) == pytest.approx(2 * 0.5 ** 12)


def test_interval_brackets_the_estimate_is_seeded_and_narrows_with_more_images():
    rng = np.random.default_rng(1)
    def ci(n, seed=0):
        labels = rng.integers(0, 10, n)
        preds = np.where(rng.random(n) < 0.6, labels, (labels + 1) % 10)
        return stats.bootstrap_ci(labels, preds, 500, 0.95, seed), labels, preds
    small, labels, preds = ci(100)
    assert small["top1"].low <= (labels == preds).mean() <= small["top1"].high
    assert stats.bootstrap_ci(labels, preds, 500, 0.95, 0) == small        # same seed, same interval
    big, _, _ = ci(4000)
    assert big["top1"].high - big["top1"].low < (small["top1"].high - small["top1"].low) / 3


def test_macro_f1_matches_scikit_learn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(2)
    labels, preds = rng.integers(0, 7, 300), rng.integers(0, 9, 300)
    assert stats.macro_f1(labels, preds) == pytest.approx(f1_score(labels, preds, average="macro", zero_division=0))


# ----------------------------------------------------------------------------- k-fold
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


def test_aggregate_section_is_validated():
    with pytest.raises(ConfigError, match=r"aggregate\.confidence must be < 1"):
        parse_params(repo_params({"aggregate": {"confidence": 1.0}}))
    assert parse_params(repo_params()).aggregate.bootstrap >= 100


# ----------------------------------------------------------------------------- data.extra
def _extra_folder(root, n=5, boxes=False):
    folder = root / "extra"
    (folder / "BIG_TRUCKS").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (48 + i, 40), (200, 30 * i, 10)).save(folder / "BIG_TRUCKS" / f"{i:03d}.jpg")
    if boxes:
        (folder / "boxes.csv").write_text("image,x1,y1,x2,y2\nBIG_TRUCKS/000.jpg,3,4,30,20\n")
    return folder


def _data_cfg(tmp_path, extra):
    raw = {**repo_params()["data"], "source": "synthetic", "cache_dir": str(tmp_path / "cache"),
           "synthetic": {**repo_params()["data"]["synthetic"], "num_classes": 12, "train_per_class": 3,
                         "test_per_class": 2}, "extra": None if extra is None else str(extra)}
    return build(DataConfig, raw, "data")


def test_extra_class_becomes_class_13_in_every_data_stage(tmp_path):
    from carbench.data.crop import write_crops
    from carbench.data.download import acquire
    from carbench.data.manifest import read_classes, read_manifest
    from carbench.data.split import write_split
    from carbench.data.store import load_meta, load_split

    extra = _extra_folder(tmp_path, boxes=True)
    metrics = acquire(_data_cfg(tmp_path, extra), SEED, tmp_path / "raw", tmp_path / "data.json")
    without = acquire(_data_cfg(tmp_path, None), SEED, tmp_path / "raw0", None)
    assert metrics["fingerprint"] == without["fingerprint"]                   # official images only
    listed = json.loads((tmp_path / "data.json").read_text())["extra"]
    assert listed["classes"][0] | {"name": "BIG_TRUCKS", "official_class": 13} == listed["classes"][0]
    assert listed["classes"][0]["train"] + listed["classes"][0]["test"] == 5 and listed["classes"][0]["boxes"] == 1
    manifest = read_manifest(tmp_path / "raw")
    trucks = manifest[manifest["official_class"] == 13]
    assert len(trucks) == 5 and set(trucks["class_id"]) == {12} and set(trucks["class_name"]) == {"BIG_TRUCKS"}
    boxed = trucks.set_index("image").loc["extra/BIG_TRUCKS/000.jpg"]
    assert (boxed.x1, boxed.y1, boxed.x2, boxed.y2) == (3, 4, 30, 20)
    whole = trucks.set_index("image").loc["extra/BIG_TRUCKS/001.jpg"]
    assert (whole.x1, whole.y1, whole.x2, whole.y2) == (1, 1, 49, 40)
    assert read_classes(tmp_path / "raw")["class_names"][12] == "BIG_TRUCKS"
    assert read_classes(tmp_path / "raw")["extra_classes"] == ["BIG_TRUCKS"]
    write_split(split_config(), SEED, tmp_path / "raw", tmp_path / "split", None, None)
    split = pd.read_csv(tmp_path / "split" / "split.csv")
    assert set(split[split["class_id"] == 12]["split"]) == {"train", "val", "test"}
    write_crops(crop_config(), False, tmp_path / "raw", tmp_path / "split", tmp_path / "crops", None, None)
    assert load_meta(tmp_path / "crops").class_names[12] == "BIG_TRUCKS"
    assert 12 in load_split(tmp_path / "crops", "test").labels


def test_extra_folder_errors_are_named(tmp_path):
    from carbench.data.download import acquire

    with pytest.raises(DataError, match="is not a folder"):
        acquire(_data_cfg(tmp_path, tmp_path / "nope"), SEED, tmp_path / "raw", None)
    extra = _extra_folder(tmp_path)
    (extra / "boxes.csv").write_text("image,x1,y1,x2,y2\nBIG_TRUCKS/missing.jpg,1,1,2,2\n")
    with pytest.raises(DataError, match="not in the class folders"):
        acquire(_data_cfg(tmp_path, extra), SEED, tmp_path / "raw", None)


# ----------------------------------------------------------------------------- sweep
def _exp_show(values):
    revs = [{"rev": f"r{i}", "name": f"fold{i}", "data": {
        "params": {"params.yaml": {"data": {"split": {"strategy": "kfold", "fold": i}, "base": {"seed": 0}}}},
        "metrics": {"metrics/headline/cnn_basic.json": {"data": {"top1": v, "f1_macro": v - 0.1, "loss": 1.0}},
                    "metrics/split.json": {"data": {"counts": {}}}}}} for i, v in enumerate(values)]
    return [{"rev": "workspace", "data": {}}, {"rev": "abc", "name": "main", "data": {},
                                               "experiments": [{"revs": [r]} for r in revs]}]


def test_sweep_summary_is_mean_and_std_over_the_runs():
    runs = sweep.select(sweep.runs_from_exp_show(_exp_show([0.5, 0.6, 0.7])), where={"split.strategy": "kfold"})
    (row,) = sweep.summarize(runs)
    assert row["experiment"] == "cnn_basic" and row["runs"] == 3
    assert row["top1_mean"] == pytest.approx(0.6) and row["top1_std"] == pytest.approx(0.1)
    text = sweep.to_markdown([row], runs)
    assert "0.6000 +/- 0.1000" in text and "split.fold: 0, 1, 2" in text
    assert sweep.select(runs, names=["fold1"])[0]["params"]["split.fold"] == 1


def test_an_aggregate_knob_changes_no_resolved_config_and_only_aggregate_tracks_it(tmp_path):
    import yaml
    from carbench.resolve import resolved_files
    from conftest import ROOT

    before = resolved_files(parse_params(repo_params()))
    after = resolved_files(parse_params(repo_params({"aggregate": {"bootstrap": 10, "seed": 3}})))
    assert before == after                                   # no train@/embed@/knn@ reruns
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    tracking = {name for name, stage in stages.items()
                if any(p == "aggregate" or str(p).startswith("aggregate.") for p in (stage.get("do", stage).get("params") or []))}
    assert tracking == {"aggregate"}


def test_compare_script_prints_intervals_and_the_paired_test(tmp_path):
    import subprocess
    import sys
    from conftest import ROOT

    for name, right in (("a", 18), ("b", 18), ("c", 5)):
        (tmp_path / name).mkdir()
        true = np.arange(20) % 4
        pred = np.where(np.arange(20) < right, true, (true + 1) % 4)
        pd.DataFrame({"image": [f"i{k}" for k in range(20)], "true": true, "predicted": pred,
                      "correct": (true == pred).astype(int)}).to_csv(tmp_path / name / "predictions.csv", index=False)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), "--eval", str(tmp_path),
                          "--bootstrap", "200"], capture_output=True, text=True, check=True).stdout
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert rows["a"].endswith("| best |") and rows["b"].endswith("| 1.0000 |")     # identical predictions: p = 1
    assert "0.9000 [" in rows["a"] and "e-" in rows["c"]


def _write_predictions(folder, images: int) -> None:
    folder.mkdir(parents=True)
    true = np.arange(images) % 4
    pd.DataFrame({"image": [f"i{k}" for k in range(images)], "true": true, "predicted": true,
                  "correct": 1}).to_csv(folder / "predictions.csv", index=False)


def _script(name: str, *args: str, env: dict | None = None):
    import os
    import subprocess
    import sys
    from conftest import ROOT

    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_compare_script_on_runs_of_two_datasets_is_one_error_line(tmp_path):
    _write_predictions(tmp_path / "a", 20)
    _write_predictions(tmp_path / "b", 30)
    result = _script("compare.py", "--eval", str(tmp_path), "--bootstrap", "10")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: b vs a: the two experiments were not evaluated on the same test images (30 vs 20); "
        "a paired test needs the same split"]


def test_compare_script_names_a_missing_experiment(tmp_path):
    _write_predictions(tmp_path / "a", 20)
    result = _script("compare.py", "--eval", str(tmp_path), "a", "nope")
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: missing per-image predictions: {tmp_path / 'nope' / 'predictions.csv'}")


def _fake_dvc(tmp_path) -> dict:
    """PATH with a `dvc` that fails the way DVC does: an ERROR line, then blank and help lines."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dvc"
    fake.write_text("#!/bin/sh\nprintf \"ERROR: unknown Git revision 'nope'\\n\\nHaving any troubles? Hit us up "
                    "at https://dvc.org/support\\n\" >&2\nexit 255\n")
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_sweep_script_errors_are_one_line(tmp_path):
    result = _script("sweep.py", "--where", "split.strategy")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: --where 'split.strategy': expected KEY=VALUE, "
                                          "e.g. --where split.strategy=kfold"]
    result = _script("sweep.py", env=_fake_dvc(tmp_path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: dvc exp show failed: ERROR: unknown Git revision 'nope'"]
