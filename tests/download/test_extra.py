"""carbench.download.extra: a user's own class folder becomes one more class in every data stage; its errors are named."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image
from support.data import SEED, crop_config, split_config
from support.params import repo_params

from carbench.config import DataConfig, build
from carbench.core.errors import DataError


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
    from carbench.download.acquire import acquire
    from carbench.data.raw import read_classes, read_manifest
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
    from carbench.download.acquire import acquire

    with pytest.raises(DataError, match="is not a folder"):
        acquire(_data_cfg(tmp_path, tmp_path / "nope"), SEED, tmp_path / "raw", None)
    extra = _extra_folder(tmp_path)
    (extra / "boxes.csv").write_text("image,x1,y1,x2,y2\nBIG_TRUCKS/missing.jpg,1,1,2,2\n")
    with pytest.raises(DataError, match="not in the class folders"):
        acquire(_data_cfg(tmp_path, extra), SEED, tmp_path / "raw", None)
