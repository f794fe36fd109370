"""End to end, small: a user's own class through every stage up to one cheap experiment, then a 3-fold and a
3-seed sweep as documented (`dvc exp run --queue ... ; dvc queue start -j N`, the seeds with two workers at once),
summarised by scripts/sweep.py.

Only `evaluate@tl_resnet50_frozen` (download, split, crop, resolve, train@: MobileNetV2 frozen, a linear head on
cached features, 4 epochs: the cheapest experiment that learns) runs, on the tiny synthetic data.
"""
from __future__ import annotations

import json
import sys
import time

import pandas as pd
import pytest
from PIL import Image
from support.project import env, make_project, merge, run, tiny_params

pytestmark = pytest.mark.e2e

EXPERIMENT = "tl_resnet50_frozen"
TARGET = f"evaluate@{EXPERIMENT}"
EXTRA = "BIG_TRUCKS"


def _extra_images(folder, n=12):
    """A new class: boxy dark trucks on a light background (learnable, unlike any synthetic class)."""
    (folder / EXTRA).mkdir(parents=True)
    for i in range(n):
        img = Image.new("RGB", (80 + 2 * i, 64), (230, 230, 220))
        img.paste((20 + 5 * i, 20, 60), (8, 16 + i % 4, 70 + i, 52))
        img.save(folder / EXTRA / f"{i:03d}.jpg")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e_honest")
    environ = env(root / "torch_home")
    params = merge(tiny_params(), {"data": {"extra": "extra"}})
    path = make_project(root / "project", params)
    _extra_images(path / "extra")
    run(["git", "add", "-A"], path, environ)
    run(["git", "commit", "-qm", "extra class"], path, environ)
    return path, environ, params


def _wait_for_queue(path, environ, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = run(["dvc", "queue", "status"], path, environ).stdout
        if "Queued" not in out and "Running" not in out:
            assert "Failed" not in out, out
            return out
        time.sleep(3)
    raise AssertionError("the queue did not finish in time")


def _sweep(path, environ, *args):
    out = run([sys.executable, "scripts/sweep.py", "--json", *args], path, environ).stdout
    return {row["experiment"]: row for row in json.loads(out)}


def test_extra_class_reaches_every_stage(project):
    path, environ, params = project
    run(["dvc", "repro", TARGET], path, environ)
    new_class = params["data"]["synthetic"]["num_classes"] + 1                 # official number after the last
    data = json.loads((path / "metrics" / "data.json").read_text())
    assert data["extra"]["classes"][0]["name"] == EXTRA and data["extra"]["classes"][0]["official_class"] == new_class
    # the fingerprint is the official images' only
    assert data["fingerprint"]["train"] + data["fingerprint"]["test"] == data["counts"]["total"] - 12
    manifest = pd.read_csv(path / "data" / "raw" / "manifest.csv")
    class_id = new_class - 1
    assert set(manifest[manifest["class_name"] == EXTRA]["official_class"]) == {new_class}
    split = pd.read_csv(path / "data" / "split" / "split.csv")
    assert set(split[split["class_id"] == class_id]["split"]) == {"train", "val", "test"}
    assert json.loads((path / "data" / "crops" / "meta.json").read_text())["class_names"][class_id] == EXTRA
    import torch

    ckpt = torch.load(path / "models" / EXPERIMENT / "best.pt", weights_only=True, map_location="cpu")
    assert ckpt["class_names"][class_id] == EXTRA and ckpt["num_classes"] == new_class
    per_class = pd.read_csv(path / "metrics" / "eval" / EXPERIMENT / "per_class.csv")
    assert per_class["class"].iloc[class_id] == EXTRA and per_class["support"].iloc[class_id] > 0
    predictions = pd.read_csv(path / "metrics" / "eval" / EXPERIMENT / "predictions.csv")
    assert (predictions["true"] == class_id).sum() == per_class["support"].iloc[class_id]
    assert EXTRA in (path / "plots" / "eval" / EXPERIMENT / "confusion.csv").read_text()
    assert predictions["correct"].mean() > 0.5                    # it learns (chance: 1/7)


def test_three_fold_sweep_through_the_queue(project):
    path, environ, _ = project
    run(["dvc", "exp", "run", "--queue", TARGET, "-S", "split.strategy=kfold", "-S", "split.folds=3",
         "-S", "split.fold=0,1,2"], path, environ)
    run(["dvc", "queue", "start", "-j", "1"], path, environ)
    _wait_for_queue(path, environ)
    rows = _sweep(path, environ, "--where", "split.strategy=kfold")
    assert rows[EXPERIMENT]["runs"] == 3
    assert 0.5 < rows[EXPERIMENT]["top1_mean"] <= 1 and rows[EXPERIMENT]["top1_std"] >= 0
    text = run([sys.executable, "scripts/sweep.py", "--where", "split.strategy=kfold"], path, environ).stdout
    assert "split.fold: 0, 1, 2" in text


def test_three_seed_sweep_through_the_queue(project):
    path, environ, _ = project
    run(["dvc", "exp", "run", "--queue", TARGET, "-S", "base.seed=0,1,2"], path, environ)
    run(["dvc", "queue", "start", "-j", "2"], path, environ)   # two workers at once (README "Scaling out")
    _wait_for_queue(path, environ)
    rows = _sweep(path, environ, "--where", "split.strategy=official")
    assert rows[EXPERIMENT]["runs"] == 3
    text = run([sys.executable, "scripts/sweep.py", "--where", "split.strategy=official"], path, environ).stdout
    assert "base.seed: 0, 1, 2" in text
